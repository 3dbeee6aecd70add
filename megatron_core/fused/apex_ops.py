"""Apex's fused kernels, used when Apex is installed and our extension is not.

Every import is guarded (megatron_core never requires Apex):
  LayerNorm / RMSNorm   apex.normalization.fused_layer_norm.fused_layer_norm_affine /
                        fused_rms_norm_affine (over the last dimension), when Apex's
                        fused_layer_norm_cuda extension is built
  masked softmax        scaled_masked_softmax_cuda.forward(scores, mask, scale) with the
                        mask [b, 1, sq, sk] (uint8/bool, True = masked)
  causal softmax        scaled_upper_triang_masked_softmax_cuda.forward(scores [b*np, s, s], scale)
The softmax kernels only take fp16/bf16 and the shapes Megatron's FusedScaleMaskSoftmax
admits (16 < sk <= 2048, sq and sk multiples of 4, b*np a multiple of 4, whole blocks of
rows); `*_fits` say whether a call does. Older Apex builds give a fully masked row uniform
probabilities, so those rows are zeroed afterwards to keep our semantics.
"""
from __future__ import annotations

from typing import Optional

import torch

from .dispatch import optional_import

_LAYER_NORM_MODULE = "apex.normalization.fused_layer_norm"
_LAYER_NORM_EXTENSION = "fused_layer_norm_cuda"
_MASKED_SOFTMAX_MODULE = "scaled_masked_softmax_cuda"
_CAUSAL_SOFTMAX_MODULE = "scaled_upper_triang_masked_softmax_cuda"
_MAX_KEYS = 2048


def _norm_function(name: str):
    # A Python-only Apex install has the functions but not their CUDA extension, which
    # they import on first call: require both.
    module = optional_import(_LAYER_NORM_MODULE)
    if module is None or optional_import(_LAYER_NORM_EXTENSION) is None:
        return None
    return getattr(module, name, None)


def has_layer_norm() -> bool:
    return _norm_function("fused_layer_norm_affine") is not None


def has_rms_norm() -> bool:
    return _norm_function("fused_rms_norm_affine") is not None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return _norm_function("fused_layer_norm_affine")(x, weight, bias, (x.shape[-1],), eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _norm_function("fused_rms_norm_affine")(x, weight, (x.shape[-1],), eps)


def _softmax_shape_fits(module, b: int, heads: int, sq: int, sk: int, dtype: torch.dtype, rows_to_split: int) -> bool:
    if module is None or dtype not in (torch.float16, torch.bfloat16):
        return False
    if not (16 < sk <= _MAX_KEYS and sq % 4 == 0 and sk % 4 == 0 and (b * heads) % 4 == 0):
        return False
    batch_per_block = getattr(module, "get_batch_per_block", None)
    return batch_per_block is not None and rows_to_split % batch_per_block(sq, sk, b, heads) == 0


def masked_softmax_fits(scores: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    if scores.dim() != 4 or mask is None or mask.dim() != 4 or mask.shape[1] != 1:
        return False
    b, heads, sq, sk = scores.shape
    module = optional_import(_MASKED_SOFTMAX_MODULE)
    return _softmax_shape_fits(module, b, heads, sq, sk, scores.dtype, sq)


def causal_softmax_fits(scores: torch.Tensor) -> bool:
    if scores.dim() != 4 or scores.shape[-1] != scores.shape[-2]:
        return False
    b, heads, sq, sk = scores.shape
    module = optional_import(_CAUSAL_SOFTMAX_MODULE)
    return _softmax_shape_fits(module, b, heads, sq, sk, scores.dtype, b * heads)


class _ApexSoftmax(torch.autograd.Function):
    """Apex's forward/backward pair; `module` is one of the two softmax extensions."""

    @staticmethod
    def forward(ctx, scores, mask, module, scale):
        scale_t = torch.tensor([scale])
        args = (scores, mask, scale_t[0]) if mask is not None else (scores, scale_t[0])
        probs = module.forward(*args)
        ctx.module, ctx.scale_t = module, scale_t
        ctx.save_for_backward(probs)
        return probs

    @staticmethod
    def backward(ctx, grad_probs):
        (probs,) = ctx.saved_tensors
        return ctx.module.backward(grad_probs.contiguous(), probs, ctx.scale_t[0]), None, None, None


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    b, _, sq, sk = scores.shape
    mask = mask.expand(b, 1, sq, sk).contiguous()
    module = optional_import(_MASKED_SOFTMAX_MODULE)
    probs = _ApexSoftmax.apply(scores.contiguous(), mask, module, float(scale))
    return probs.masked_fill(mask.all(dim=-1, keepdim=True), 0.0)


def causal_softmax(scores: torch.Tensor, scale: float) -> torch.Tensor:
    b, heads, sq, sk = scores.shape
    module = optional_import(_CAUSAL_SOFTMAX_MODULE)
    probs = _ApexSoftmax.apply(scores.reshape(b * heads, sq, sk).contiguous(), None, module, float(scale))
    return probs.view(b, heads, sq, sk)
