"""The tensors the optimizer steps: fp32 master weights whose gradients are `main_grad` views.

Plain (every data-parallel rank steps everything): one master per model parameter. An
fp32 parameter is its own master; a bf16/fp16 one gets an fp32 copy that is written back
(rounded) after every step.

Distributed (ZeRO-1): this rank steps only its shard of each bucket (grad_buffer.py). A
parameter cut by shard boundaries contributes one 1-D piece per rank that owns part of
it; the piece's gradient is the view of the reduced fp32 gradient over the same elements.
For fp32 parameters the piece is a view of the flat parameter buffer itself (stepped in
place); for bf16/fp16 an fp32 copy written back into the buffer. The buckets are then
all-gathered so every rank holds the whole updated model.

Each master keeps its model parameter's optimizer group (weight-decay and lr
multipliers) and whether its gradient counts toward the global norm (counts_toward_norm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..mpu.grads import counts_toward_norm
from .grad_buffer import GradBuffer, shard_range


@dataclass
class Master:
    param: torch.nn.Parameter       # what the optimizer steps (fp32)
    grad: torch.Tensor              # its gradient: a view of main_grad
    write_back: Optional[torch.Tensor]  # the model's storage to copy the update into (None: in place)
    counts: bool                    # counts toward the global gradient norm
    model_param: Optional[torch.nn.Parameter] = None   # the model parameter it steps (part of)
    elements: Optional[tuple] = None    # (start, end) of the flat elements of model_param it covers


def _group_index(model_groups: List[dict]) -> Dict[int, int]:
    return {id(p): g for g, group in enumerate(model_groups) for p in group["params"]}


def _optimizer_groups(model_groups: List[dict], masters_by_group: List[List[Master]]) -> List[dict]:
    groups = []
    for group, masters in zip(model_groups, masters_by_group):
        settings = {k: v for k, v in group.items() if k != "params"}
        groups.append({**settings, "params": [m.param for m in masters]})
    return groups


def plain_masters(model_groups: List[dict]):
    """Masters for every parameter; returns (masters, optimizer param groups)."""
    by_group: List[List[Master]] = [[] for _ in model_groups]
    for g, group in enumerate(model_groups):
        for p in group["params"]:
            if p.dtype == torch.float32:
                master = Master(p, p.main_grad, None, counts_toward_norm(p), p, (0, p.numel()))
            else:
                copy = torch.nn.Parameter(p.detach().float().clone())
                master = Master(copy, p.main_grad, p.data, counts_toward_norm(p), p, (0, p.numel()))
            by_group[g].append(master)
    return [m for ms in by_group for m in ms], _optimizer_groups(model_groups, by_group)


def sharded_masters(model_groups: List[dict], buffers: List[GradBuffer], rank: int, size: int):
    """Masters for this rank's shard of every bucket; returns (masters, optimizer param groups)."""
    group_of = _group_index(model_groups)
    by_group: List[List[Master]] = [[] for _ in model_groups]
    for buffer in buffers:
        for plan in buffer.plans:
            start, end = shard_range(plan, rank, size)
            for i in plan.params:
                p = buffer.params[i]
                p_start, p_end = buffer.ranges[id(p)]
                lo, hi = max(start, p_start), min(end, p_end)
                if lo >= hi:
                    continue
                weights = buffer.param_data[lo:hi]
                grad = buffer.grad_data[lo:hi]
                elements = (lo - p_start, hi - p_start)
                if weights.dtype == torch.float32:
                    master = Master(torch.nn.Parameter(weights), grad, None, counts_toward_norm(p), p, elements)
                else:
                    master = Master(torch.nn.Parameter(weights.detach().float().clone()), grad, weights,
                                    counts_toward_norm(p), p, elements)
                by_group[group_of[id(p)]].append(master)
    return [m for ms in by_group for m in ms], _optimizer_groups(model_groups, by_group)
