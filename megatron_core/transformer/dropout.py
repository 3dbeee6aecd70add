"""Dropout that knows where its input lives, so tensor-parallel runs can equal serial ones.

    dropout(x, p, training, config)                  x is whole on every TP rank
    dropout(x, p, training, config, split_dim=d)     x is this rank's slice along dim d
                                                     (its heads, or its sequence chunk)
Whole activations use the default generator: it is seeded alike on every rank, so all
ranks (and a serial run) drop the same units. Split activations use the RNG tracker's
model-parallel stream by default (Megatron's behaviour: each rank's own stream, fast,
but not the serial mask). With config.tp_invariant_dropout every mask is drawn at full
size from the default generator and sliced, so TP=k drops exactly what TP=1 drops; the
price is generating tp times more random numbers for split activations.

    dropout_keep_mask(x, p, training, config, split_dim=None)
draws the keep mask (0/1 in x's dtype; None when nothing drops) by the same rules, for
ops that apply it themselves (megatron_core.fused.bias_dropout_add). On CPU it is the
very mask F.dropout would draw from the same generator state.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..mpu import parallel_state as ps
from ..mpu.random import get_rng_tracker
from .config import TransformerConfig


def _full_size_keep_mask(x: torch.Tensor, p: float, split_dim: Optional[int]) -> torch.Tensor:
    world = ps.get_tensor_model_parallel_world_size() if split_dim is not None else 1
    full_shape = list(x.shape)
    if split_dim is not None:
        full_shape[split_dim] *= world
    keep = torch.empty(full_shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    if world > 1:
        local = x.shape[split_dim]
        keep = keep.narrow(split_dim, ps.get_tensor_model_parallel_rank() * local, local)
    return keep


def dropout(x: torch.Tensor, p: float, training: bool, config: TransformerConfig,
            split_dim: Optional[int] = None) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if config.tp_invariant_dropout:
        return x * _full_size_keep_mask(x, p, split_dim) * (1.0 / (1.0 - p))
    if split_dim is None:
        return F.dropout(x, p, True)
    with get_rng_tracker().fork():
        return F.dropout(x, p, True)


def dropout_keep_mask(x: torch.Tensor, p: float, training: bool, config: TransformerConfig,
                      split_dim: Optional[int] = None) -> Optional[torch.Tensor]:
    """The keep mask `dropout` would apply to x, drawn from the same generator, or None."""
    if not training or p == 0.0:
        return None
    if config.tp_invariant_dropout:
        return _full_size_keep_mask(x, p, split_dim)
    draw = lambda: torch.empty_like(x, memory_format=torch.contiguous_format).bernoulli_(1.0 - p)
    if split_dim is None:
        return draw()
    with get_rng_tracker().fork():
        return draw()
