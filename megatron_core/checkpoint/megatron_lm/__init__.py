"""Megatron-LM's own checkpoint formats, read and written without importing Megatron: its
`torch` files (megatron-core or legacy key names, args as an argparse.Namespace: files.py,
key_names.py, args.py) and its `torch_dist` directories (torch_dist.py)."""
