"""State-dict and config mappings between our models and HuggingFace transformers (TP=1, full
state dicts): one module per family, the fused-QKV layouts in qkv_layout.py, and the registry
(registry.py) that a converter looks families up in."""
