"""Contiguous fp32 gradient buffers split into buckets: where every `main_grad` lives.

One buffer per (parameter dtype, lane). Parameters enter in reverse registration order,
roughly the order backward produces their gradients, so the first bucket fills first. A
bucket holds whole parameters and closes once it reaches `bucket_size` elements. With the
distributed optimizer every bucket is padded to a multiple of the data-parallel size and
splits into equal contiguous shards: data-parallel rank r owns shard r of every bucket
(its optimizer state, master weights and reduced gradients cover only those ranges), and
the parameters themselves then also live in one flat buffer of their dtype, so the
updated shards are all-gathered straight into the model.

Each parameter gets `main_grad`, an fp32 view into the buffer that micro-batch gradients
are added to (the `.grad` autograd produces is dropped after each backward).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch


@dataclass(frozen=True)
class BucketPlan:
    start: int                 # first element in the buffer
    end: int                   # one past the last element, padding included
    params: Tuple[int, ...]    # indices into the buffer's parameter list


def plan_buckets(numels: Sequence[int], bucket_size: int, pad_to: int) -> Tuple[List[int], List[BucketPlan]]:
    """Offsets of parameters of `numels` elements laid out in order, and the buckets over them.

    Pure arithmetic: a bucket closes after the parameter that brings it to `bucket_size`
    elements; each bucket's length is rounded up to a multiple of `pad_to`."""
    if bucket_size < 1 or pad_to < 1:
        raise ValueError(f"bucket size ({bucket_size}) and padding ({pad_to}) must be positive")
    offsets, buckets = [], []
    start = cursor = 0
    members: List[int] = []
    for index, numel in enumerate(numels):
        offsets.append(cursor)
        cursor += numel
        members.append(index)
        if cursor - start >= bucket_size or index == len(numels) - 1:
            end = start + -(-(cursor - start) // pad_to) * pad_to
            buckets.append(BucketPlan(start, end, tuple(members)))
            start = cursor = end
            members = []
    return offsets, buckets


def shard_range(bucket: BucketPlan, rank: int, size: int) -> Tuple[int, int]:
    """The elements of `bucket` data-parallel rank `rank` of `size` owns."""
    shard = (bucket.end - bucket.start) // size
    return bucket.start + rank * shard, bucket.start + (rank + 1) * shard


class GradBuffer:
    """The fp32 gradients (and, for the distributed optimizer, the weights) of `params`,
    all of one dtype, laid out as `plan_buckets` says."""

    def __init__(self, params: List[torch.nn.Parameter], bucket_size: int, data_parallel_size: int,
                 flat_params: bool, held: bool = False):
        self.params = list(params)
        self.dtype = self.params[0].dtype
        self.held = held   # reduced over data parallelism only in step(), after the stage-copy sums
        device = self.params[0].device
        pad_to = data_parallel_size if flat_params else 1
        offsets, self.plans = plan_buckets([p.numel() for p in self.params], bucket_size, pad_to)
        total = self.plans[-1].end
        self.grad_data = torch.zeros(total, dtype=torch.float32, device=device)
        self.param_data = torch.zeros(total, dtype=self.dtype, device=device) if flat_params else None
        self.ranges: Dict[int, Tuple[int, int]] = {}
        for param, offset in zip(self.params, offsets):
            end = offset + param.numel()
            self.ranges[id(param)] = (offset, end)
            param.main_grad = self.grad_data[offset:end].view_as(param)
            if self.param_data is not None:
                # The model's weights become views of the flat buffer: all-gathers write into them.
                self.param_data[offset:end].copy_(param.detach().reshape(-1))
                param.data = self.param_data[offset:end].view_as(param)

    def bucket_of(self) -> Dict[int, int]:
        """Parameter id -> index of its bucket in `plans`."""
        return {id(self.params[i]): b for b, plan in enumerate(self.plans) for i in plan.params}


def build_grad_buffers(params: List[torch.nn.Parameter], held: Sequence[torch.nn.Parameter], bucket_size: int,
                       data_parallel_size: int, flat_params: bool) -> List[GradBuffer]:
    """Buffers for `params` (in backward order), one per dtype, with the `held` ones (reduced
    over data parallelism only after a cross-stage sum) in buffers of their own, last."""
    held_ids = {id(p) for p in held}
    buffers = []
    for lane_held in (False, True):
        by_dtype: Dict[torch.dtype, List[torch.nn.Parameter]] = {}
        for p in params:
            if (id(p) in held_ids) == lane_held:
                by_dtype.setdefault(p.dtype, []).append(p)
        for dtype in sorted(by_dtype, key=str):
            buffers.append(GradBuffer(by_dtype[dtype], bucket_size, data_parallel_size, flat_params, lane_held))
    return buffers
