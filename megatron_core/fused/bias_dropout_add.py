"""residual + dropout(x + bias), with the dropout's keep mask given by the caller.

    bias_dropout_add(x, bias, residual, keep, p)
        keep: 0/1 values in x's dtype and shape (None: no dropout), kept units scaled
        by 1 / (1 - p). transformer/dropout.py draws it (`dropout_keep_mask`), so the
        tensor-parallel RNG rules hold and the fused and fallback paths drop the same units.
The kernel computes in fp32 and rounds once; the fallback rounds after each torch op.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import dispatch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _KernelBiasDropoutAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, keep, scale):
        keep = keep.contiguous() if keep is not None else None
        out = dispatch.extension().bias_dropout_add(x.contiguous(), bias, residual.contiguous(), keep, scale)
        ctx.save_for_backward(keep)
        ctx.scale, ctx.has_bias, ctx.cols = scale, bias is not None, x.shape[-1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (keep,) = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_out if keep is None else dispatch.extension().bias_dropout_add(
            grad_out, None, None, keep, ctx.scale)
        grad_bias = grad_x.reshape(-1, ctx.cols).sum(dim=0) if ctx.has_bias else None
        return grad_x, grad_bias, grad_out, None, None


def bias_dropout_add_reference(x, bias, residual, keep, p):
    out = x if bias is None else x + bias
    if keep is None:
        return residual + out
    # one pass for mask, scale and residual (keep is 0/1, so out * keep * scale rounds once either way)
    return torch.addcmul(residual, out, keep, value=1.0 / (1.0 - p))


def bias_dropout_add(x: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor,
                     keep: Optional[torch.Tensor], p: float, enabled: bool = True) -> torch.Tensor:
    same = lambda t: t.dtype == x.dtype and t.shape == x.shape
    fits = (x.dtype in _DTYPES and x.dim() >= 1 and same(residual) and (keep is None or same(keep))
            and (bias is None or (bias.dtype == x.dtype and bias.shape == x.shape[-1:] and bias.is_contiguous())))
    if dispatch.choose(x, enabled, fits) == dispatch.KERNEL:
        return _KernelBiasDropoutAdd.apply(x, bias, residual, keep, 1.0 / (1.0 - p) if keep is not None else 1.0)
    return bias_dropout_add_reference(x, bias, residual, keep, p)
