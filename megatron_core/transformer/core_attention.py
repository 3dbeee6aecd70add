"""softmax(q k^T / sqrt(d) + bias, masked) v for this rank's heads.

Shapes (Megatron's layout): q [sq, b, heads, d], k and v [sk, b, groups, d] where the
heads of group g are g*h/g .. (g+1)*h/g - 1 (grouped-query attention); output
[sq, b, heads * d].

Masks are boolean with True meaning "may NOT attend" (Megatron's convention, the
opposite of HF's), broadcastable to [b, heads, sq, sk]. With attn_mask_type="causal"
the causal mask is always applied, combined with any given mask; it is aligned to the
last keys, so queries may also see sk - sq earlier keys (memory, a KV cache).

Two paths compute the same function:
  * torch scaled_dot_product_attention (flash / memory-efficient kernels on GPU);
    its attention dropout draws from the stream that `dropout.py` would use;
  * an explicit path (fp32 softmax, Megatron's query-key layer scaling) used when
    config.tp_invariant_dropout needs a full-size mask, or when forced; without an
    attention bias its softmax is megatron_core.fused's scaled (causal) masked softmax.
Masked entries get zero weight in both. A query whose every key is masked (a padding
query under a [b, 1, s, s] padding mask) gets a zero context vector and passes no
gradient, in both paths alike, instead of NaN.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import fused
from ..fused.softmax import causal_mask  # noqa: F401  (re-exported: relative attention uses it)
from ..mpu.random import get_rng_tracker
from .config import TransformerConfig
from .dropout import dropout


class CoreAttention(nn.Module):
    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: str = "padding"):
        super().__init__()
        if attn_mask_type not in ("causal", "padding"):
            raise ValueError(f"attn_mask_type must be 'causal' or 'padding', got {attn_mask_type!r}.")
        self.config = config
        self.causal = attn_mask_type == "causal"
        self.layer_number = max(1, layer_number)
        self.dropout_p = config.attention_dropout

    def _full_mask(self, attention_mask: Optional[torch.Tensor], sq: int, sk: int, device):
        mask = attention_mask
        if self.causal:
            causal = causal_mask(sq, sk, device)
            mask = causal if mask is None else (mask | causal)
        return mask

    def _use_sdpa(self) -> bool:
        backend = self.config.attention_backend
        if backend != "auto":
            return backend == "sdpa"
        dropout_active = self.training and self.dropout_p > 0.0
        return not (dropout_active and self.config.tp_invariant_dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None,
                attention_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        sq, b, heads, d = query.shape
        sk, groups = key.shape[0], key.shape[2]
        # [s, b, n, d] -> [b, n, s, d]; every query head gets its group's key/value head
        # (SDPA's enable_gqa reads the shared heads in place; the explicit path repeats them).
        use_sdpa = self._use_sdpa()
        q, k, v = query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)
        if groups != heads and not use_sdpa:
            k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
        pure_causal = attention_mask is None and attention_bias is None and self.causal and sq == sk
        # One query after the keys (a step of incremental decoding) may see every key.
        sees_all_keys = attention_mask is None and self.causal and sq == 1
        # SDPA applies a pure causal mask itself (is_causal): no mask tensor needed then.
        full = None if (use_sdpa and pure_causal) or sees_all_keys else \
            self._full_mask(attention_mask, sq, sk, q.device)
        if use_sdpa:
            context = self._sdpa(q, k, v, full, attention_bias, is_causal=pure_causal)
        else:
            context = self._explicit(q, k, v, full, attention_bias)
        if attention_mask is not None:
            # Queries that may attend to nothing: zero context (and no gradient) in both paths.
            context = context.masked_fill(full.all(dim=-1, keepdim=True), 0.0)
        return context.permute(2, 0, 1, 3).reshape(sq, b, heads * d)

    def _sdpa(self, q, k, v, full, attention_bias, is_causal):
        p = self.dropout_p if self.training else 0.0
        mask = None
        if not is_causal:
            mask = attention_bias.to(q.dtype) if attention_bias is not None else None
            if full is not None:
                # The dtype's most negative number drowns the score (and any bias): masked
                # entries get weight 0, as the explicit path's fill gives.
                base = mask if mask is not None else torch.zeros((), dtype=q.dtype, device=q.device)
                mask = torch.where(full, torch.finfo(q.dtype).min, base)
        gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
        call = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal,
                                                    scale=self.config.softmax_scale, **gqa)
        if p > 0.0:
            # The heads here are this rank's share: use the tensor-parallel stream, as the
            # explicit path's dropout(split_dim=heads) does.
            with get_rng_tracker().fork():
                return call()
        return call()

    def _explicit(self, q, k, v, full, attention_bias):
        config = self.config
        coeff = self.layer_number if config.apply_query_key_layer_scaling else 1.0
        scale = config.softmax_scale if config.softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        scores = torch.matmul(q, k.transpose(-1, -2)) * (scale / coeff)
        if attention_bias is None:
            probs = self._fused_softmax(scores, full, coeff)
        else:
            probs = self._biased_softmax(scores, full, attention_bias, coeff)
        probs = dropout(probs.to(v.dtype), self.dropout_p, self.training, config, split_dim=1)
        return torch.matmul(probs, v)

    def _fused_softmax(self, scores, full, coeff):
        """softmax(coeff * scores) over the keys `full` leaves visible (fp32 math, fused where built)."""
        enabled = self.config.fused_kernels
        if self.causal and full is not None and full.dim() == 2:
            # `full` is the causal mask alone (no attention_mask was given): the kernel
            # computes it instead of reading it.
            return fused.scaled_upper_triang_masked_softmax(scores, coeff, enabled=enabled)
        return fused.scaled_masked_softmax(scores, full, coeff, enabled=enabled)

    def _biased_softmax(self, scores, full, attention_bias, coeff):
        """softmax(coeff * scores + bias) with masked entries at weight 0 (relative positions)."""
        if self.config.attention_softmax_in_fp32:
            scores = scores.float()
        scores = scores * coeff + attention_bias.to(scores.dtype)
        if full is not None:
            scores = scores.masked_fill(full, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)
