"""Scaled masked softmax over the last dim of attention scores [b, heads, sq, sk].

    scaled_masked_softmax(scores, mask, scale)       mask bool (True = may NOT attend),
                                                     broadcastable to the scores
    scaled_upper_triang_masked_softmax(scores, scale) causal: query i sees keys up to
                                                     i + sk - sq (end-aligned)

Semantics (Megatron's fused softmax): the scores are scaled first, then masked; masked
keys get weight exactly 0; a query whose every key is masked gets a row of zeros and
passes no gradient (Megatron's kernel fills masked scores with -10000 and zeroes a row
whose max is -10000; we drop masked keys outright, which is the same whenever a visible
score exceeds -10000 + ~100, and stays exact beyond it). The math runs in fp32; the
result has the scores' dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import apex_ops, dispatch


def causal_mask(sq: int, sk: int, device) -> torch.Tensor:
    """[sq, sk] bool, True above the end-aligned diagonal (keys a query may not see)."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).triu(diagonal=sk - sq + 1)


def masked_softmax_reference(scores: torch.Tensor, mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """The fallback: plain torch ops, differentiable by autograd."""
    x = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scale  # fp32 math, fp64 stays fp64
    if mask is None:
        return torch.softmax(x, dim=-1).to(scores.dtype)
    # The most negative finite float, not -inf: a fully masked row then gives a finite
    # (uniform) softmax whose backward is finite, and the fill below zeroes it.
    probs = torch.softmax(x.masked_fill(mask, torch.finfo(x.dtype).min), dim=-1)
    probs = probs.masked_fill(mask, 0.0).masked_fill(mask.all(dim=-1, keepdim=True), 0.0)
    return probs.to(scores.dtype)


class _KernelSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, mask, causal, scale):
        probs = dispatch.extension().softmax_forward(scores.contiguous(), mask, causal, scale)
        ctx.save_for_backward(probs)
        ctx.scale = scale
        return probs

    @staticmethod
    def backward(ctx, grad_probs):
        (probs,) = ctx.saved_tensors
        grad = dispatch.extension().softmax_backward(grad_probs.contiguous(), probs, ctx.scale)
        return grad, None, None, None


def _kernel_dtype(scores: torch.Tensor) -> bool:
    return scores.dim() == 4 and scores.dtype in (torch.float32, torch.float16, torch.bfloat16)


def scaled_masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor], scale: float = 1.0,
                          enabled: bool = True) -> torch.Tensor:
    if mask is not None and mask.dim() < 4:
        mask = mask[(None,) * (4 - mask.dim())]  # leading broadcast dims: [b|1, h|1, sq|1, sk]
    applicable = _kernel_dtype(scores) and (mask is None or (mask.dtype == torch.bool and mask.dim() == 4))
    backend = dispatch.choose(scores, enabled, applicable, lambda: apex_ops.masked_softmax_fits(scores, mask))
    if backend == dispatch.KERNEL:
        return _KernelSoftmax.apply(scores, mask, False, float(scale))
    if backend == dispatch.APEX:
        return apex_ops.masked_softmax(scores, mask, scale)
    return masked_softmax_reference(scores, mask, scale)


def scaled_upper_triang_masked_softmax(scores: torch.Tensor, scale: float = 1.0, enabled: bool = True) -> torch.Tensor:
    backend = dispatch.choose(scores, enabled, _kernel_dtype(scores), lambda: apex_ops.causal_softmax_fits(scores))
    if backend == dispatch.KERNEL:
        return _KernelSoftmax.apply(scores, None, True, float(scale))
    if backend == dispatch.APEX:
        return apex_ops.causal_softmax(scores, scale)
    sq, sk = scores.shape[-2:]
    return masked_softmax_reference(scores, causal_mask(sq, sk, scores.device), scale)
