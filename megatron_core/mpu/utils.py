"""Small arithmetic helpers shared by the tensor-parallel layers."""
from __future__ import annotations

from typing import List, Tuple

import torch


def divide(numerator: int, denominator: int, what: str = "value") -> int:
    """Integer division that refuses to round: parallel splits must be exact."""
    if numerator % denominator != 0:
        raise ValueError(
            f"{what} ({numerator}) is not divisible by {denominator}; "
            f"choose sizes so that {numerator} % {denominator} == 0."
        )
    return numerator // denominator


def split_tensor_along_last_dim(tensor: torch.Tensor, num_partitions: int,
                                contiguous_split_chunks: bool = False) -> Tuple[torch.Tensor, ...]:
    last_dim_size = divide(tensor.size(-1), num_partitions, "last dimension")
    chunks = torch.split(tensor, last_dim_size, dim=-1)
    if contiguous_split_chunks:
        return tuple(chunk.contiguous() for chunk in chunks)
    return chunks


def vocab_range_for_rank(global_vocab_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[first, last) rows of the vocabulary held by `rank` of a tensor-parallel group."""
    per_partition = divide(global_vocab_size, world_size, "vocabulary size")
    first = rank * per_partition
    return first, first + per_partition


def flatten_list(list_of_lists: List[list]) -> list:
    return [item for sub in list_of_lists for item in sub]
