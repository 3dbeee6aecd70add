"""Other projects' formats, both ways: HuggingFace (hf_import.py, hf_export.py, safetensors_files.py,
hf_tokenizer_files.py) and Chinese-Transformer-XL (chinese_txl.py). The pure key and config
mappings of each family live with the models (models/hf/); this layer reads and writes files.
"""
