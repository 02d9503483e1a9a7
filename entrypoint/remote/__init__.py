"""What a reference string means and how to reach what it names: local paths and the `sample:`, `tiny:`, `shapes:`
prefixes (refs.py), S3 (s3.py) and the Hugging Face Hub (hub.py).
"""
