"""LayerNorm and RMSNorm over the last dimension.

    layer_norm(x, weight, bias, eps)   (x - mean) / sqrt(var + eps) * weight + bias
    rms_norm(x, weight, eps)           x / sqrt(mean(x^2) + eps) * weight

Statistics in fp32 whatever x's dtype (fp16/bf16/fp32); weight, bias and the result have
x's dtype. The fallback is torch's own F.layer_norm / F.rms_norm (what nn.LayerNorm and
nn.RMSNorm run). The kernel takes weight and bias of x's dtype; anything else falls back.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import apex_ops, dispatch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _KernelNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, rms):
        x = x.contiguous()
        y, mean, rstd = dispatch.extension().norm_forward(x, weight, bias, rms, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.rms, ctx.has_bias = rms, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = dispatch.extension().norm_backward(
            grad_y.contiguous(), x, weight, mean, rstd, ctx.rms, ctx.has_bias)
        return (grad_x, grad_w if weight is not None else None, grad_b if ctx.has_bias else None, None, None)


def _kernel_fits(x: torch.Tensor, *params: Optional[torch.Tensor]) -> bool:
    return x.dtype in _DTYPES and x.dim() >= 1 and all(
        p is None or (p.dtype == x.dtype and p.is_contiguous() and p.shape == x.shape[-1:]) for p in params)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
               enabled: bool = True) -> torch.Tensor:
    apex_fits = lambda: weight is not None and bias is not None and apex_ops.has_layer_norm()
    backend = dispatch.choose(x, enabled, _kernel_fits(x, weight, bias), apex_fits)
    if backend == dispatch.KERNEL:
        return _KernelNorm.apply(x, weight, bias, float(eps), False)
    if backend == dispatch.APEX:
        return apex_ops.layer_norm(x, weight, bias, eps)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, enabled: bool = True) -> torch.Tensor:
    apex_fits = lambda: weight is not None and apex_ops.has_rms_norm()
    backend = dispatch.choose(x, enabled, _kernel_fits(x, weight), apex_fits)
    if backend == dispatch.KERNEL:
        return _KernelNorm.apply(x, weight, None, float(eps), True)
    if backend == dispatch.APEX:
        return apex_ops.rms_norm(x, weight, eps)
    return F.rms_norm(x, x.shape[-1:], weight, eps)
