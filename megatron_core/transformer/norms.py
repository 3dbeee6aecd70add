"""LayerNorm / RMSNorm chosen by the config, marked for sequence-parallel gradient sums.

The modules are torch's nn.LayerNorm / nn.RMSNorm (same parameters, state-dict keys and
isinstance checks) whose forward runs megatron_core.fused's kernel where it is built and
enabled, and torch's own function otherwise.
"""
from __future__ import annotations

from torch import nn

from .. import fused
from ..mpu.layers import default_device

from .config import TransformerConfig


class LayerNorm(nn.LayerNorm):
    def __init__(self, size: int, eps: float, fused_kernels: bool = True, **factory):
        super().__init__(size, eps=eps, **factory)
        self.fused_kernels = fused_kernels

    def forward(self, x):
        return fused.layer_norm(x, self.weight, self.bias, self.eps, enabled=self.fused_kernels)


class RMSNorm(nn.RMSNorm):
    def __init__(self, size: int, eps: float, fused_kernels: bool = True, **factory):
        super().__init__(size, eps=eps, **factory)
        self.fused_kernels = fused_kernels

    def forward(self, x):
        return fused.rms_norm(x, self.weight, self.eps, enabled=self.fused_kernels)


def build_norm(config: TransformerConfig, hidden_size: int | None = None) -> nn.Module:
    size = hidden_size or config.hidden_size
    cls = LayerNorm if config.normalization == "LayerNorm" else RMSNorm
    norm = cls(size, config.layernorm_epsilon, config.fused_kernels, dtype=config.params_dtype,
               device=default_device())
    # With sequence parallelism each TP rank normalizes only its sequence chunk, so these
    # replicated weights get partial gradients that mpu.allreduce_sequence_parallel_gradients
    # must sum over the TP group.
    for param in norm.parameters():
        param.sequence_parallel = config.sequence_parallel_active
    return norm
