"""Accumulate micro-batch gradients into `main_grad` and average them over data parallelism.

A post-accumulate-grad hook on every parameter adds its fresh `.grad` into its fp32
`main_grad` and drops `.grad`. With overlap on, the hook also counts: once a parameter has
received `num_microbatches` gradients (one per micro-batch backward) it is final, and once
every parameter of a bucket is final that bucket's reduction is launched asynchronously
while the rest of backward runs. Buckets are launched strictly in order (a ready bucket
waits for the ones before it), so every data-parallel rank issues the same collectives in
the same order even when a parameter is unused on one rank only. `finish()` (called by the
backend's step) launches whatever is left (unused parameters, held buckets, everything
without overlap) and waits for all of it.

The reduction is a mean: the bucket is divided by the data-parallel size, then all-reduced
(plain optimizer) or reduce-scattered (distributed optimizer: afterwards only this rank's
shard of each bucket holds the mean; the rest of the buffer is left unreduced).

A parameter used in several recomputed (reentrant checkpoint) regions receives several
gradients per micro-batch; counting cannot tell those apart, so it stops with an error
instead of reducing a bucket early.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..mpu.collectives import _reduce_scatter_flat
from .grad_buffer import GradBuffer, shard_range


class _Bucket:
    def __init__(self, buffer: GradBuffer, index: int):
        plan = buffer.plans[index]
        self.buffer = buffer
        self.plan = plan
        self.grad = buffer.grad_data[plan.start:plan.end]
        self.params = [buffer.params[i] for i in plan.params]
        self.waiting = 0          # parameters not yet final this step
        self.work = None          # the async collective in flight
        self.scattered: Optional[torch.Tensor] = None
        self.launched = False


class GradSync:
    def __init__(self, buffers: List[GradBuffer], group, data_parallel_size: int, data_parallel_rank: int,
                 scatter: bool, overlap: bool):
        self.group = group
        self.size = data_parallel_size
        self.rank = data_parallel_rank
        self.scatter = scatter
        self.overlap = overlap
        self.buckets = [_Bucket(buf, i) for buf in buffers for i in range(len(buf.plans))]
        self._bucket_of = {}
        for bucket in self.buckets:
            for p in bucket.params:
                self._bucket_of[id(p)] = bucket
        self._expected: Optional[int] = None
        self._counts = {}
        self._next = 0            # the first bucket not yet launched
        self._names = {}
        params = [p for bucket in self.buckets for p in bucket.params]
        if any(getattr(p, "_grad_sync_hooked", False) for p in params):
            raise ConfigError("these parameters already feed another backend's gradient buffers; build one backend "
                              "per model (or call remove_hooks() on the old one first).")
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]
        for p in params:
            p._grad_sync_hooked = True
        self.reset()

    def name_parameters(self, names: dict) -> None:
        """Parameter id -> name, for error messages."""
        self._names = names

    def reset(self) -> None:
        """A new step: nothing received, nothing launched."""
        for bucket in self.buckets:
            bucket.waiting = 0 if bucket.buffer.held else len(bucket.params)
            bucket.work, bucket.scattered, bucket.launched = None, None, False
        self._counts = {id(p): 0 for bucket in self.buckets for p in bucket.params}
        self._next = 0

    def expect(self, num_microbatches: int) -> None:
        """Each parameter is final after this many backward passes (enables overlap)."""
        self._expected = int(num_microbatches) if self.overlap else None

    def _on_grad(self, param: torch.Tensor) -> None:
        param.main_grad.add_(param.grad)
        param.grad = None
        if self._expected is None:
            return
        key = id(param)
        self._counts[key] += 1
        count = self._counts[key]
        if count > self._expected:
            name = self._names.get(key, tuple(param.shape))
            raise ConfigError(
                f"parameter {name} received {count} gradients in a step of {self._expected} micro-batches (it is "
                f"used in several recomputed regions); run without --overlap-grad-reduce or with a recompute "
                f"setting that keeps it outside the recomputed layers.")
        bucket = self._bucket_of[key]
        if count == self._expected and not bucket.buffer.held:
            bucket.waiting -= 1
            self._launch_ready()

    def _launch_ready(self) -> None:
        while self._next < len(self.buckets):
            bucket = self.buckets[self._next]
            if bucket.waiting > 0 or bucket.buffer.held:
                return
            self._launch(bucket, async_op=True)
            self._next += 1

    def _launch(self, bucket: _Bucket, async_op: bool) -> None:
        bucket.launched = True
        if self.size == 1:
            return
        bucket.grad.div_(self.size)
        if self.scatter:
            bucket.scattered = torch.empty(bucket.grad.numel() // self.size, dtype=bucket.grad.dtype,
                                           device=bucket.grad.device)
            bucket.work = _reduce_scatter_flat(bucket.scattered, bucket.grad, group=self.group, async_op=async_op)
        else:
            bucket.work = dist.all_reduce(bucket.grad, group=self.group, async_op=async_op)

    def finish(self) -> None:
        """Launch every bucket not yet launched, in order, and wait for all of them."""
        for bucket in self.buckets[self._next:]:
            self._launch(bucket, async_op=False)
        self._next = len(self.buckets)
        for bucket in self.buckets:
            if bucket.work is not None:
                bucket.work.wait()
            if bucket.scattered is not None:
                start, end = shard_range(bucket.plan, self.rank, self.size)
                bucket.buffer.grad_data[start:end].copy_(bucket.scattered)
            bucket.work, bucket.scattered = None, None

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        for bucket in self.buckets:
            for p in bucket.params:
                p._grad_sync_hooked = False
