"""Rotary position embedding applied to t [seq, batch, heads, d] at angles [seq, batch, 1, rot_dim].

Only the first rot_dim channels rotate; the rest pass through. Pair layouts:
  interleaved=True   pairs (x0, x1), (x2, x3), ...        GPT-J, Meta's Llama weights
  interleaved=False  pairs (x_i, x_{i + rot_dim/2})        GPT-NeoX, HF Llama ("rotate_half")
Angles are fp32 and laid out per channel as transformer/rotary.py's RotaryEmbedding
makes them. The rotation is computed in fp32 and cast back to t's dtype. The kernel
gives no gradient to the angles (they are a buffer); angles that need one fall back.
"""
from __future__ import annotations

import torch

from . import dispatch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([-x2, x1], dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_reference(t: torch.Tensor, angles: torch.Tensor, interleaved: bool) -> torch.Tensor:
    rot_dim = angles.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    t_rot = t_rot.to(torch.promote_types(t.dtype, torch.float32))  # fp32 math, fp64 stays fp64
    rotated = t_rot * angles.cos() + _rotate(t_rot, interleaved) * angles.sin()
    return torch.cat([rotated.to(t.dtype), t_pass], dim=-1)


class _KernelRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, angles, interleaved):
        ctx.save_for_backward(angles)
        ctx.interleaved = interleaved
        return dispatch.extension().rotary_apply(t.contiguous(), angles, interleaved, False)

    @staticmethod
    def backward(ctx, grad_out):
        (angles,) = ctx.saved_tensors
        return dispatch.extension().rotary_apply(grad_out.contiguous(), angles, ctx.interleaved, True), None, None


def apply_rotary(t: torch.Tensor, angles: torch.Tensor, interleaved: bool, enabled: bool = True) -> torch.Tensor:
    fits = (t.dtype in _DTYPES and t.dim() == 4 and angles.dim() == 4 and angles.shape[2] == 1
            and angles.dtype == torch.float32 and not angles.requires_grad and angles.shape[-1] <= t.shape[-1])
    if dispatch.choose(t, enabled, fits) == dispatch.KERNEL:
        return _KernelRotary.apply(t, angles, interleaved)
    return apply_rotary_reference(t, angles, interleaved)
