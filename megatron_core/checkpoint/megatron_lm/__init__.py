"""Megatron-LM's own checkpoint formats: its `torch` files (megatron-core or legacy key names,
args as an argparse.Namespace) and its `torch_dist` directories, read into this package's
checkpoint contents and written from them."""
