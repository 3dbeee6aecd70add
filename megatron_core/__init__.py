"""megatron_core: Megatron-style distributed pretraining engine."""
__version__ = "0.1.0"
