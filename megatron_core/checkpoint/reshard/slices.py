"""One target tensor-parallel shard, read from the source shards by index arithmetic.

A tensor split along `dim` with stride k over S ranks is cut into S*k equal chunks;
source rank s holds chunks s, s+S, s+2S, ... (mpu.layout.shard_tensor). A target rank r
of T ranks holds chunks r, r+T, ... of the same dimension cut into T*k chunks. So each
target chunk is a range [a, b) of the full dimension, and every position g of it lives
in source chunk g // (L/(S*k)) on rank (that chunk) % S. read_shard copies exactly those
ranges out of the sources (narrow views: a memory-mapped source is touched only where
read) into one new tensor, so the result never shares storage with a source file.

Vocabulary re-padding: the full target dimension may be longer or shorter than the
source's (another padded vocabulary). Rows past the source's end are zeros; rows past
the target's end are dropped. Only the true vocabulary rows carry meaning.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from ...errors import CheckpointError
from ...mpu.sharding_map import ShardSpec


def _target_ranges(length: int, rank: int, size: int, stride: int) -> List[Tuple[int, int]]:
    if length % (size * stride) != 0:
        raise CheckpointError(f"a dimension of {length} does not split into {size} tensor-parallel ranks x stride "
                              f"{stride}; choose a tensor-parallel size that divides it (a vocabulary can be "
                              f"re-padded with --make-vocab-size-divisible-by).")
    chunk = length // (size * stride)
    return [((rank + size * i) * chunk, (rank + size * i + 1) * chunk) for i in range(stride)]


def _output(out: Optional[torch.Tensor], shape, dtype: torch.dtype, zeros: bool) -> torch.Tensor:
    if out is None:
        return torch.zeros(shape, dtype=dtype) if zeros else torch.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"read_shard was given a {tuple(out.shape)} {out.dtype} tensor to fill with a "
                         f"{tuple(shape)} {dtype} shard.")
    return out.zero_() if zeros else out


def _copy(dest: torch.Tensor, view: torch.Tensor) -> None:
    dest.copy_(view)


def read_shard(spec: ShardSpec, read_source: Callable[[int], torch.Tensor], source_size: int, target_rank: int,
               target_size: int, target_length: Optional[int] = None,
               copy: Callable[[torch.Tensor, torch.Tensor], None] = _copy,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Target rank `target_rank`'s shard of a tensor whose source shards `read_source(s)`
    (s < source_size) were split as `spec` says. `target_length`: the full length of the
    split dimension at the target (another padded vocabulary); default the source's.
    `copy(dest, view)` moves each piece (LazyFiles.copy reads a mapped file's bytes directly);
    `out`: a contiguous tensor of the target shard's shape and dtype to fill (default: a new one)."""
    if spec.replicated:
        first = read_source(0)
        out = _output(out, first.shape, first.dtype, zeros=False)
        copy(out, first)
        return out
    dim, stride = spec.split_dim, spec.stride
    first = read_source(0)
    local = first.shape[dim]
    source_length = local * source_size
    length = source_length if target_length is None else target_length
    if source_length % stride or local % stride:
        raise CheckpointError(f"a source shard of {local} along dimension {dim} does not hold {stride} equal pieces; "
                              f"the checkpoint's sharding map does not describe it.")
    source_chunk = local // stride
    ranges = _target_ranges(length, target_rank, target_size, stride)
    shape = list(first.shape)
    shape[dim] = sum(b - a for a, b in ranges)
    out = _output(out, shape, first.dtype, zeros=length > source_length)
    at = 0
    for a, b in ranges:
        position = a
        while position < min(b, source_length):
            chunk = position // source_chunk
            end = min(b, source_length, (chunk + 1) * source_chunk)
            source = read_source(chunk % source_size)
            offset = (chunk // source_size) * source_chunk + position - chunk * source_chunk
            copy(out.narrow(dim, at + position - a, end - position), source.narrow(dim, offset, end - position))
            position = end
        at += b - a
    return out
