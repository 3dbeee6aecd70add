"""Pieces the HF converters share: ConversionError, vocabulary padding and layer counting
(all of them), and for the decoder-only ones (GPT-2, Llama) the grouped fused-QKV layout
and config checks.

Our fused query_key_value (transformer/attention.py) holds, for h query heads of size d
in g groups, the rows  [q heads of group 0 | k0 | v0 | q heads of group 1 | k1 | v1 | ...].
HF keeps q ([h*d, ...], heads in order), k and v ([g*d, ...], groups in order) apart.
These helpers work on weights (rows x in-features) and biases (rows) alike.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import torch

from ...errors import ConversionError
from ...transformer.config import TransformerConfig

__all__ = ["ConversionError", "fuse_grouped_qkv", "split_grouped_qkv", "pad_vocab_rows", "trim_vocab_rows",
           "require", "count_layers", "take"]




def fuse_grouped_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                     num_groups: int) -> torch.Tensor:
    """HF q [h*d, ...], k and v [g*d, ...] -> our fused [(h + 2g)*d, ...] rows."""
    rest = tuple(q.shape[1:])
    q = q.reshape(num_groups, -1, *rest)   # [g, (h/g)*d, ...]
    k = k.reshape(num_groups, -1, *rest)   # [g, d, ...]
    v = v.reshape(num_groups, -1, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest).contiguous()


def split_grouped_qkv(fused: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of fuse_grouped_qkv: our fused rows -> (q, k, v) in HF's order."""
    rest = tuple(fused.shape[1:])
    per_group = fused.reshape(num_groups, (num_heads // num_groups + 2) * head_dim, *rest)
    q, k, v = torch.split(per_group, [num_heads // num_groups * head_dim, head_dim, head_dim], dim=1)
    return tuple(t.reshape(-1, *rest).contiguous() for t in (q, k, v))


def pad_vocab_rows(table: torch.Tensor, padded_vocab_size: Optional[int], what: str) -> torch.Tensor:
    """Append zero rows up to our padded vocabulary (None: keep the size)."""
    if padded_vocab_size is None or padded_vocab_size == table.shape[0]:
        return table
    if padded_vocab_size < table.shape[0]:
        raise ConversionError(f"padded_vocab_size {padded_vocab_size} is smaller than the {table.shape[0]} rows of "
                              f"{what}; pass a size of at least {table.shape[0]}.")
    return torch.cat([table, table.new_zeros((padded_vocab_size - table.shape[0],) + tuple(table.shape[1:]))])


def trim_vocab_rows(table: torch.Tensor, vocab_size: Optional[int], what: str) -> torch.Tensor:
    """Drop our padding rows (None: keep every row)."""
    if vocab_size is None or vocab_size == table.shape[0]:
        return table
    if vocab_size > table.shape[0]:
        raise ConversionError(f"vocab_size {vocab_size} is larger than the {table.shape[0]} rows of {what}.")
    return table[:vocab_size].clone()


def require(config: TransformerConfig, family: str, **expected) -> None:
    """One sentence listing every config field that the HF family cannot represent."""
    problems = [f"{name}={value!r} (this config has {getattr(config, name)!r})"
                for name, value in expected.items() if getattr(config, name) != value]
    if problems:
        raise ConversionError(f"{family} needs {', '.join(problems)}; convert a model built that way.")


def count_layers(keys: Iterable[str], marker: str) -> int:
    """Number of layers in a state dict whose layer keys contain `marker` followed by the index."""
    indices = set()
    for key in keys:
        if marker in key:
            rest = key.split(marker, 1)[1]
            head = rest.split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return len(indices)


def take(state_dict: Dict[str, torch.Tensor], key: str, family: str) -> torch.Tensor:
    try:
        return state_dict[key]
    except KeyError:
        raise ConversionError(f"the {family} state dict has no {key!r}; is it a checkpoint of that model?") from None
