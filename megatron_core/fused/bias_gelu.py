"""gelu(x + bias) over x [..., cols] with bias [cols] (or None), exact or tanh-approximated.

`approximate` is F.gelu's: "none" (erf, --activation gelu) or "tanh" (GPT-2's gelu_new).
The fallback is F.gelu(x + bias); the kernel rounds x + bias to x's dtype before the
GeLU, as that fallback does, and computes the GeLU and its derivative in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import dispatch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _KernelBiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, tanh_approx):
        x = x.contiguous()
        ctx.save_for_backward(x, bias)
        ctx.tanh_approx = tanh_approx
        return dispatch.extension().bias_gelu_forward(x, bias, tanh_approx)

    @staticmethod
    def backward(ctx, grad_y):
        x, bias = ctx.saved_tensors
        grad_x = dispatch.extension().bias_gelu_backward(grad_y.contiguous(), x, bias, ctx.tanh_approx)
        grad_bias = grad_x.reshape(-1, x.shape[-1]).sum(dim=0) if bias is not None else None
        return grad_x, grad_bias, None


def bias_gelu(x: torch.Tensor, bias: Optional[torch.Tensor], approximate: str = "none",
              enabled: bool = True) -> torch.Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}.")
    fits = x.dtype in _DTYPES and x.dim() >= 1 and (
        bias is None or (bias.dtype == x.dtype and bias.shape == x.shape[-1:] and bias.is_contiguous()))
    if dispatch.choose(x, enabled, fits) == dispatch.KERNEL:
        return _KernelBiasGelu.apply(x, bias, approximate == "tanh")
    return F.gelu(x if bias is None else x + bias, approximate=approximate)
