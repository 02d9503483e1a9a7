"""The base model: families (families.py), finding and loading it (loading.py), its image tokens (image_tokens.py), its
architecture on the meta device (architecture.py), the LoRA recipe (lora.py), images encoded once a step
(encode_once.py), and the models built offline for tests and demos (tiny.py, shapes.py, offline.py, published.py).
"""
