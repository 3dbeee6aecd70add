"""Interleaved 1F1B: each pipeline rank holds v model chunks (virtual stages).

With p ranks and v chunks the model is cut into p*v pieces; rank r holds pieces
r, r + p, r + 2p, ... Micro-batches travel round the ring v times. They are taken in
groups of p: forward index k (0 .. v*M - 1) is micro-batch (k // pv) * p + k % p on chunk
(k // p) % v; backward index k is the same micro-batch on chunk v - 1 - (k // p) % v.

Timing model (what makes the exchanges pair up). Rank r works in steps t = -1, 0, 1, ...
and step t of rank r happens at "time" t + r; neighbours exchange once per step, and the
exchange of rank r at step t pairs with the one of its neighbour at the same time:
rank r+1's step t-1, rank r-1's step t+1, and round the ring rank p-1's step t-(p-1)
(for rank 0) or rank 0's step t+(p-1) (for rank p-1). At step t rank r runs forward
index t and backward index t - W_r with

    W_r = 2 (p - r - 1) + (v - 1) p         (the warm-up length)

then sends what those produced and receives what its neighbours' paired steps produced.
With this W_r every input arrives exactly one step before it is needed (a short proof is
in tests/test_pipeline_plan.py, which checks it exhaustively), so the plan below is a pure
function of (p, v, M, r): all ranks derive matching send/receive flags without talking.
Steps before warm-up ends run forwards only, steps after the forwards run out run
backwards only; when M is small some steps only pass tensors on.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional

import torch

from ..mpu import parallel_state as ps
from .p2p import P2PConfig, exchange
from .microbatch_step import backward_step, forward_step


@dataclass(frozen=True)
class StepFlags:
    forward: Optional[int]     # forward index run at this step, or None
    backward: Optional[int]    # backward index run at this step, or None
    send_next: bool
    send_prev: bool
    # The chunk here that what arrives feeds, or None when nothing arrives.
    recv_prev_chunk: Optional[int]
    recv_next_chunk: Optional[int]

    @property
    def recv_prev(self) -> bool:
        return self.recv_prev_chunk is not None

    @property
    def recv_next(self) -> bool:
        return self.recv_next_chunk is not None


@dataclass(frozen=True)
class InterleavedPlan:
    stages: int            # p
    chunks: int            # v
    num_microbatches: int  # M
    forward_only: bool = False

    def __post_init__(self):
        if self.num_microbatches % self.stages != 0:
            raise ValueError(
                f"the interleaved schedule needs the number of micro-batches ({self.num_microbatches}) "
                f"to be a multiple of the pipeline size ({self.stages}); change the global batch size or "
                f"the micro-batch size.")

    @property
    def total(self) -> int:
        return self.num_microbatches * self.chunks

    def forward_chunk(self, k: int) -> int:
        return (k // self.stages) % self.chunks

    def backward_chunk(self, k: int) -> int:
        return self.chunks - 1 - self.forward_chunk(k)

    def microbatch(self, k: int) -> int:
        group, within = divmod(k, self.stages * self.chunks)
        return group * self.stages + within % self.stages

    def warmup(self, rank: int) -> int:
        return 2 * (self.stages - rank - 1) + (self.chunks - 1) * self.stages

    def last_step(self, rank: int) -> int:
        return self.total - 1 if self.forward_only else self.warmup(rank) + self.total - 1

    def forward_at(self, rank: int, step: int) -> Optional[int]:
        return step if 0 <= step < self.total else None

    def backward_at(self, rank: int, step: int) -> Optional[int]:
        if self.forward_only:
            return None
        k = step - self.warmup(rank)
        return k if 0 <= k < self.total else None

    def _sends_next(self, rank: int, step: int) -> bool:
        k = self.forward_at(rank, step)
        return k is not None and not (rank == self.stages - 1 and self.forward_chunk(k) == self.chunks - 1)

    def _sends_prev(self, rank: int, step: int) -> bool:
        k = self.backward_at(rank, step)
        return k is not None and not (rank == 0 and self.backward_chunk(k) == 0)

    def flags(self, rank: int, step: int) -> StepFlags:
        p = self.stages
        # The neighbours' steps paired with this one, and, round the ring (last rank <->
        # rank 0), the chunk shift: chunk c's output on rank p-1 feeds chunk c+1 on rank 0.
        if rank == 0:
            prev_rank, prev_step, prev_shift = p - 1, step - (p - 1), 1
        else:
            prev_rank, prev_step, prev_shift = rank - 1, step + 1, 0
        if rank == p - 1:
            next_rank, next_step, next_shift = 0, step + (p - 1), -1
        else:
            next_rank, next_step, next_shift = rank + 1, step - 1, 0
        recv_prev_chunk = recv_next_chunk = None
        if self._sends_next(prev_rank, prev_step):
            recv_prev_chunk = self.forward_chunk(self.forward_at(prev_rank, prev_step)) + prev_shift
        if self._sends_prev(next_rank, next_step):
            recv_next_chunk = self.backward_chunk(self.backward_at(next_rank, next_step)) + next_shift
        return StepFlags(
            forward=self.forward_at(rank, step), backward=self.backward_at(rank, step),
            send_next=self._sends_next(rank, step), send_prev=self._sends_prev(rank, step),
            recv_prev_chunk=recv_prev_chunk, recv_next_chunk=recv_next_chunk)


def forward_backward_pipelining_with_interleaving(*, forward_step_func: Callable, data_iterator, model,
                                                  num_microbatches: int, p2p_config: P2PConfig,
                                                  forward_only: bool = False) -> List[dict]:
    """Run the plan on this rank. `model` and `data_iterator` are lists, one per chunk."""
    if not isinstance(model, (list, tuple)):
        raise ValueError("the interleaved schedule needs a list of model chunks, one per virtual stage.")
    chunks, stages, rank = len(model), ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    virtual = ps.get_virtual_pipeline_model_parallel_world_size()
    if virtual != chunks:
        raise ValueError(f"got {chunks} model chunks but virtual_pipeline_model_parallel_size is {virtual}; "
                         f"build one chunk per virtual stage.")
    if not isinstance(data_iterator, (list, tuple)):
        data_iterator = [data_iterator] * chunks
    plan = InterleavedPlan(stages, chunks, num_microbatches, forward_only)
    stats: List[dict] = []
    arrived_inputs: List[Deque] = [deque() for _ in range(chunks)]   # received, not yet used
    arrived_grads: List[Deque] = [deque() for _ in range(chunks)]
    saved: List[Deque] = [deque() for _ in range(chunks)]            # (input, output) awaiting backward

    def is_first_piece(chunk):
        return rank == 0 and chunk == 0

    def is_last_piece(chunk):
        return rank == stages - 1 and chunk == chunks - 1

    def run_forward(k):
        chunk = plan.forward_chunk(k)
        ps.set_virtual_pipeline_model_parallel_rank(chunk)
        input_tensor = None if is_first_piece(chunk) else _pop(arrived_inputs[chunk], "activation", k)
        output = forward_step(forward_step_func, data_iterator[chunk], model[chunk], plan.microbatch(k),
                              num_microbatches, input_tensor, stats, is_last_piece(chunk))
        if not forward_only:
            saved[chunk].append((input_tensor, output))
        return output, chunk

    def run_backward(k):
        chunk = plan.backward_chunk(k)
        ps.set_virtual_pipeline_model_parallel_rank(chunk)
        input_tensor, output = saved[chunk].popleft()
        output_grad = None if is_last_piece(chunk) else _pop(arrived_grads[chunk], "gradient", k)
        return backward_step(input_tensor, output, output_grad), chunk

    try:
        for step in range(-1, plan.last_step(rank) + 1):
            f = plan.flags(rank, step)
            output = input_grad = None
            if f.forward is not None:
                output, _ = run_forward(f.forward)
            if f.backward is not None:
                input_grad, _ = run_backward(f.backward)
            from_prev, from_next = exchange(
                p2p_config, send_next=output if f.send_next else None,
                send_prev=input_grad if f.send_prev else None, recv_prev=f.recv_prev, recv_next=f.recv_next)
            if f.recv_prev:
                arrived_inputs[f.recv_prev_chunk].append(from_prev)
            if f.recv_next:
                arrived_grads[f.recv_next_chunk].append(from_next)
    finally:
        ps.set_virtual_pipeline_model_parallel_rank(0)
    return stats


def _pop(queue: Deque, what: str, k: int) -> torch.Tensor:
    if not queue:
        raise RuntimeError(f"interleaved schedule: no {what} had arrived for index {k}; "
                           f"this is a bug in the schedule plan.")
    return queue.popleft()
