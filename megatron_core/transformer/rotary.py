"""Rotary position embeddings (RoPE), both pair layouts.

The angle of frequency j at position p is p * base^(-2j/rot_dim). Two ways to lay the
rotated pairs out inside a head of size d (only the first rot_dim channels rotate):
  interleaved=True   pairs (x0, x1), (x2, x3), ...        GPT-J, Meta's Llama weights
  interleaved=False  pairs (x_i, x_{i + rot_dim/2})        GPT-NeoX, HF Llama ("rotate_half")
A checkpoint converter switching layouts permutes the q/k rows of each head
(see models/hf/llama.py).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import fused
from .config import TransformerConfig


class RotaryEmbedding(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.rot_dim = config.rotary_dim
        self.interleaved = config.rotary_interleaved
        inv_freq = 1.0 / (config.rotary_base ** (torch.arange(0, self.rot_dim, 2, dtype=torch.float32) / self.rot_dim))
        # Not a parameter and not saved: it is a function of the config.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Angles for `position_ids` [batch, seq] -> [seq, batch, 1, rot_dim] (fp32)."""
        angles = position_ids.to(self.inv_freq.device, torch.float32)[..., None] * self.inv_freq  # [b, s, rot/2]
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat([angles, angles], dim=-1)
        return angles.transpose(0, 1).unsqueeze(2)


def apply_rotary(t: torch.Tensor, angles: torch.Tensor, interleaved: bool, fused_kernels: bool = True) -> torch.Tensor:
    """Rotate the first rot_dim channels of t [seq, batch, heads, d]; the rest pass through.

    Computed in fp32 so low-precision runs rotate exactly like fp32 ones, then cast back
    (megatron_core.fused.apply_rotary: the fused kernel, or its torch fallback).
    """
    return fused.apply_rotary(t, angles, interleaved, enabled=fused_kernels)
