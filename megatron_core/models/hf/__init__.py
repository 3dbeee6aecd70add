"""State-dict mappings between our models and HuggingFace transformers (TP=1, full state dicts)."""
