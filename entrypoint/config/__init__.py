"""The settings: every DPO_* variable declared once (settings.py), TRL's DPOConfig fields (trainer_fields.py), the
recipes of presets/ (presets.py), where each setting came from (origin.py) and the generated reference (reference.py).

Nothing here imports torch: a bad setting fails in a fraction of a second.
"""
