"""Tensor-parallel MLP: column-parallel up projection, activation, row-parallel down.

Gated activations (swiglu, geglu) fuse the gate and up projections into one
dense_h_to_4h whose full weight is [gate; up] (2 * ffn rows). It is split with stride 2
(mpu.layout.shard_tensor; the sharding map records it), so each rank holds [its rows of
gate; its rows of up] and computes act(gate) * up on its own columns; TP shards remain
slices of the serial weight.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import fused
from ..mpu.layers import ColumnParallelLinear, RowParallelLinear
from .config import TransformerConfig
from .init import init_method, output_init_method


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":  # GPT-2's "gelu_new"
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "swiglu":
        return lambda x: (lambda gate, up: F.silu(gate) * up)(*x.chunk(2, dim=-1))
    if name == "geglu":
        return lambda x: (lambda gate, up: F.gelu(gate) * up)(*x.chunk(2, dim=-1))
    if name == "geglu_tanh":  # T5 v1.1's "gated-gelu" (HF gelu_new on the gate)
        return lambda x: (lambda gate, up: F.gelu(gate, approximate="tanh") * up)(*x.chunk(2, dim=-1))
    raise ValueError(f"unknown activation {name!r}.")


# Activations with a fused bias + GeLU kernel, by F.gelu's `approximate` argument.
FUSED_GELU_APPROXIMATION = {"gelu": "none", "gelu_tanh": "tanh"}


class ParallelMLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        gated = config.gated_linear_unit
        self.dense_h_to_4h = ColumnParallelLinear(
            config.hidden_size, config.ffn_hidden_size * (2 if gated else 1), bias=config.add_bias_linear,
            gather_output=False, init_method=init_method(config), stride=2 if gated else 1,
            skip_bias_add=True, params_dtype=config.params_dtype, sequence_parallel=config.sequence_parallel,
            fold_skipped_bias_off_gpu=True)     # the CPU path adds no bias of its own after it
        self.activation = activation_fn(config.activation)
        self.gelu_approximate = FUSED_GELU_APPROXIMATION.get(config.activation)
        self.fused_kernels = config.fused_kernels
        self.dense_4h_to_h = RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear, input_is_parallel=True,
            init_method=output_init_method(config), skip_bias_add=True, params_dtype=config.params_dtype,
            sequence_parallel=config.sequence_parallel, fold_skipped_bias_off_gpu=True)

    def forward(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        intermediate, bias = self.dense_h_to_4h(hidden_states)
        if self.gelu_approximate is not None:
            return self.dense_4h_to_h(fused.bias_gelu(intermediate, bias, self.gelu_approximate, self.fused_kernels))
        if bias is not None:
            intermediate = intermediate + bias
        return self.dense_4h_to_h(self.activation(intermediate))
