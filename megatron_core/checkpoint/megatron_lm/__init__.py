"""Megatron-LM's own checkpoint formats: the files NVIDIA's Megatron-LM writes and reads, read
and written here without importing Megatron (torch_dist.py: `--ckpt-format torch_dist`)."""
