"""Every conversion between our fused attention projections and other layouts, in one place.

Our fused query_key_value (transformer/attention.py) holds, for h query heads of size d
in g groups, the rows

    [ q heads of group 0 (h/g * d) | k0 (d) | v0 (d) | q heads of group 1 | k1 | v1 | ... ]

(plain multi-head attention is g = h: [q0 k0 v0 | q1 k1 v1 | ...]); cross-attention's fused
key_value holds [k0 v0 | k1 v1 | ...]. The other layouts met in checkpoints:

  * separate q ([h*d, ...], heads in order), k and v ([g*d, ...], groups in order):
    HF Llama, BERT, MegatronBERT, RoFormer, T5 (g = h);      interleave_qkv / deinterleave_qkv
  * one tensor of stacked blocks [q | k | v] (each block heads in order): HF GPT-2's
    c_attn (after the Conv1D transpose) and the older Megatron / Chinese-Transformer-XL
    query_key_value;                                          qkv_from_blocks / qkv_to_blocks
  * separate k and v for cross-attention: HF T5's EncDecAttention;   interleave_kv / deinterleave_kv

All functions work on weights (rows x in-features) and biases (rows) alike, and return new
contiguous tensors (safetensors refuses views that share storage).
"""
from __future__ import annotations

from typing import Tuple

import torch

from ...errors import ConversionError


def _fresh(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def _head_dim(rows: int, heads_per_row_block: int, what: str) -> int:
    if heads_per_row_block <= 0 or rows % heads_per_row_block:
        raise ConversionError(f"{what} has {rows} rows, not a multiple of {heads_per_row_block} heads; "
                              f"check num_attention_heads and num_query_groups.")
    return rows // heads_per_row_block


def _check_groups(num_heads: int, num_groups: int) -> None:
    if num_groups <= 0 or num_heads % num_groups:
        raise ConversionError(f"num_attention_heads {num_heads} is not a multiple of num_query_groups {num_groups}.")


def interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                   num_groups: int) -> torch.Tensor:
    """Separate q [h*d, ...], k and v [g*d, ...] -> our fused [(h + 2g)*d, ...] rows."""
    _check_groups(num_heads, num_groups)
    d = _head_dim(q.shape[0], num_heads, "the query projection")
    if k.shape[0] != num_groups * d or v.shape[0] != num_groups * d:
        raise ConversionError(f"key/value projections have {k.shape[0]}/{v.shape[0]} rows, expected "
                              f"{num_groups} groups x head size {d}; check num_query_groups.")
    rest = tuple(q.shape[1:])
    per_group = [t.reshape(num_groups, -1, *rest) for t in (q, k, v)]  # [g, rows of the group, ...]
    return _fresh(torch.cat(per_group, dim=1).reshape(-1, *rest))


def deinterleave_qkv(fused: torch.Tensor, num_heads: int, num_groups: int
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of interleave_qkv: our fused rows -> (q, k, v), each heads/groups in order."""
    _check_groups(num_heads, num_groups)
    d = _head_dim(fused.shape[0], num_heads + 2 * num_groups, "the fused query_key_value")
    rest = tuple(fused.shape[1:])
    per_group = fused.reshape(num_groups, (num_heads // num_groups + 2) * d, *rest)
    q, k, v = torch.split(per_group, [num_heads // num_groups * d, d, d], dim=1)
    return tuple(_fresh(t.reshape(-1, *rest)) for t in (q, k, v))


def qkv_from_blocks(blocks: torch.Tensor, num_heads: int, num_groups: int) -> torch.Tensor:
    """Stacked [q | k | v] rows (q: h*d, k and v: g*d) -> our fused rows."""
    d = _head_dim(blocks.shape[0], num_heads + 2 * num_groups, "the stacked [q | k | v] projection")
    q, k, v = torch.split(blocks, [num_heads * d, num_groups * d, num_groups * d], dim=0)
    return interleave_qkv(q, k, v, num_heads, num_groups)


def qkv_to_blocks(fused: torch.Tensor, num_heads: int, num_groups: int) -> torch.Tensor:
    """Inverse of qkv_from_blocks: our fused rows -> stacked [q | k | v]."""
    return _fresh(torch.cat(deinterleave_qkv(fused, num_heads, num_groups), dim=0))


def interleave_kv(k: torch.Tensor, v: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Separate k and v [g*d, ...] -> our cross-attention key_value rows [k0 v0 | k1 v1 | ...]."""
    d = _head_dim(k.shape[0], num_groups, "the key projection")
    if v.shape != k.shape:
        raise ConversionError(f"key and value projections differ in shape ({tuple(k.shape)} vs {tuple(v.shape)}).")
    rest = tuple(k.shape[1:])
    return _fresh(torch.stack([k.reshape(num_groups, d, *rest), v.reshape(num_groups, d, *rest)], dim=1)
                  .reshape(-1, *rest))


def deinterleave_kv(fused: torch.Tensor, num_groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of interleave_kv."""
    d = _head_dim(fused.shape[0], 2 * num_groups, "the fused key_value")
    rest = tuple(fused.shape[1:])
    per_group = fused.reshape(num_groups, 2, d, *rest)
    return _fresh(per_group[:, 0].reshape(-1, *rest)), _fresh(per_group[:, 1].reshape(-1, *rest))
