"""Gradient utilities that must see the whole model across tensor and pipeline ranks."""
from __future__ import annotations

import math
from typing import Iterable, List, Union

import torch
import torch.distributed as dist

from . import parallel_state as ps
from .init_methods import param_is_tensor_parallel


def _params_list(parameters: Union[torch.Tensor, Iterable[torch.Tensor]]) -> List[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters)


def counts_toward_norm(param: torch.Tensor) -> bool:
    """A parameter counts once per model replica.

    Replicated parameters (LayerNorm, row-parallel bias) live on every TP rank: only TP
    rank 0 counts them. A parameter marked `shared` (a pipeline stage's copy of a table
    another stage owns: a tied last stage's word table, T5's first decoder stage's tables,
    Transformer-XL's r_w_bias / r_r_bias after the first stage) is counted by its owner.
    """
    if getattr(param, "shared", False):
        return False
    return param_is_tensor_parallel(param) or ps.get_tensor_model_parallel_rank() == 0


def param_grad(param: torch.Tensor):
    """The gradient reductions act on: the fp32 `main_grad` a training backend accumulates
    micro-batch gradients into when it keeps one, else `.grad`."""
    main_grad = getattr(param, "main_grad", None)
    return main_grad if main_grad is not None else param.grad


def total_norm(tensors: List[torch.Tensor], groups, norm_type: float = 2.0) -> float:
    """Norm of the concatenation of `tensors` held across the ranks of `groups`.

    Each rank passes its own disjoint part (the caller leaves out copies that another rank
    counts); the partial sums (max for the inf-norm) are reduced over every group in turn,
    e.g. [data-parallel group, model-parallel group] for gradients sharded over DP."""
    device = tensors[0].device if tensors else (torch.device("cuda", torch.cuda.current_device())
                                                if torch.cuda.is_available() else torch.device("cpu"))
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        total = torch.zeros((), dtype=torch.float32, device=device)
        for t in tensors:
            total = torch.maximum(total, t.detach().abs().max().float())
        for group in groups:
            dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group)
        return float(total.item())
    total = torch.zeros((), dtype=torch.float32, device=device)
    if tensors:     # one foreach kernel for all the per-tensor norms (a model has hundreds of tensors)
        norms = torch._foreach_norm([t.detach().float() for t in tensors], norm_type)
        total += torch.stack(norms).pow(norm_type).sum()
    for group in groups:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return float(total.item() ** (1.0 / norm_type))


def get_grad_norm(parameters, norm_type: float = 2.0) -> float:
    """Norm of the gradients of the whole model (all TP and PP ranks of this replica)."""
    grads = [param_grad(p) for p in _params_list(parameters)
             if param_grad(p) is not None and counts_toward_norm(p)]
    return total_norm(grads, [ps.get_model_parallel_group()], norm_type)


def clip_grad_norm(parameters, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale gradients in place so that their global norm is at most `max_norm`.

    Returns the norm before clipping (inf or nan is returned unclipped so that the caller
    can skip the step).
    """
    params = _params_list(parameters)
    total_norm = get_grad_norm(params, norm_type)
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and math.isfinite(total_norm):
        grads = [param_grad(p).detach() for p in params if param_grad(p) is not None]
        if grads:
            torch._foreach_mul_(grads, clip_coeff)
    return total_norm


def allreduce_sequence_parallel_gradients(parameters) -> None:
    """Sum over the TP group the gradients of replicated parameters used on sequence chunks.

    With sequence parallelism LayerNorm weights and row-parallel biases see only this
    rank's part of the sequence; the full gradient is the sum over the TP group.
    """
    if ps.get_tensor_model_parallel_world_size() == 1:
        return
    grads = [param_grad(p) for p in _params_list(parameters)
             if getattr(p, "sequence_parallel", False) and param_grad(p) is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=ps.get_tensor_model_parallel_group())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
