"""models: one file per family, registry.py (the family specs: models/registry.py's docstring),
rank_parameters.py (ModelShape: parameter counts per rank by structure) and hf/ (the pure
HuggingFace key and config mappings)."""
