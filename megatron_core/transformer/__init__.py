"""The configurable tensor-parallel transformer that every model family is built from."""
from .attention import CrossAttention, SelfAttention
from .block import TransformerBlock
from .config import ConfigError, TransformerConfig
from .core_attention import CoreAttention, causal_mask
from .dropout import dropout
from .init import component_rng, component_seed
from .layer import TransformerLayer, bias_dropout_add
from .mlp import ParallelMLP
from .norms import build_norm
from .rotary import RotaryEmbedding, apply_rotary

__all__ = ["ConfigError", "CoreAttention", "CrossAttention", "ParallelMLP", "RotaryEmbedding", "SelfAttention",
           "TransformerBlock", "TransformerConfig", "TransformerLayer", "apply_rotary", "bias_dropout_add",
           "build_norm", "causal_mask", "component_rng", "component_seed", "dropout"]
