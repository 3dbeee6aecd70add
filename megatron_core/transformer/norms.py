"""LayerNorm / RMSNorm chosen by the config, marked for sequence-parallel gradient sums."""
from __future__ import annotations

from torch import nn

from ..mpu.layers import default_device

from .config import TransformerConfig


def build_norm(config: TransformerConfig, hidden_size: int | None = None) -> nn.Module:
    size = hidden_size or config.hidden_size
    if config.normalization == "LayerNorm":
        norm = nn.LayerNorm(size, eps=config.layernorm_epsilon, dtype=config.params_dtype, device=default_device())
    else:
        norm = nn.RMSNorm(size, eps=config.layernorm_epsilon, dtype=config.params_dtype, device=default_device())
    # With sequence parallelism each TP rank normalizes only its sequence chunk, so these
    # replicated weights get partial gradients that mpu.allreduce_sequence_parallel_gradients
    # must sum over the TP group.
    for param in norm.parameters():
        param.sequence_parallel = config.sequence_parallel_active
    return norm
