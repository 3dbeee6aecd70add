"""Make a rank's gradients final after all micro-batches of a step have run backward.

The sums the schedules leave to the end of the step:
  * sequence parallelism: LayerNorm/RMSNorm weights saw only this rank's sequence chunk,
    so their gradients are summed over the tensor-parallel group;
  * tied word embeddings under pipelining: the first stage's input table and the last
    stage's output copy are one parameter, so their gradients are summed over the
    embedding group (first + last stage) and both copies take the same optimizer step;
  * tables each stage of a stack holds a copy of (T5 relative-position bias,
    Transformer-XL's r_w_bias / r_r_bias) are summed over the stages of that stack;
  * data parallelism is NOT done here: the training backend owns it (bucketed, maybe
    overlapped with backward, maybe reduce-scattered for the distributed optimizer) and
    calls these sums itself in `step()`, the stage copies before its data-parallel
    reduction (their buffer layouts differ between stages, so they are summed while every
    element is still whole), the sequence-parallel sums after it. Code without a backend
    (tests) averages over data parallelism with `allreduce_data_parallel_grads`.

Every sum acts on `mpu.param_grad(p)`: the backend's fp32 `main_grad` when it keeps one,
else `.grad`.
"""
from __future__ import annotations

from typing import Iterable, List

import torch
import torch.distributed as dist

from ..mpu import parallel_state as ps
from ..mpu.grads import allreduce_sequence_parallel_gradients, param_grad
from .schedules import unwrap_model


def _chunks(model) -> List[torch.nn.Module]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def tied_embedding_parameters(model) -> List[torch.nn.Parameter]:
    """This rank's copies of the tied word embedding that live on a pipeline end stage.

    A chunk holds one when it has the input embedding (first stage) or the output copy
    (last stage) and ties them; models expose it as `word_embeddings_weight()` and say
    they tie with `share_embeddings_and_output_weights`."""
    found = []
    for chunk in _chunks(model):
        chunk = unwrap_model(chunk)
        if not getattr(chunk, "share_embeddings_and_output_weights", False):
            continue
        if not (getattr(chunk, "pre_process", False) or getattr(chunk, "post_process", False)):
            continue
        weight = chunk.word_embeddings_weight()
        if weight is not None and weight.requires_grad:
            found.append(weight)
    # A single chunk with both ends ties within itself: it appears once.
    unique = {id(w): w for w in found}
    return list(unique.values())


def allreduce_embedding_grads(model) -> None:
    if ps.get_pipeline_model_parallel_world_size() == 1 or not ps.is_rank_in_embedding_group(ignore_virtual=True):
        return
    _sum_grads(tied_embedding_parameters(model), ps.get_embedding_group())


def _sum_grads(params, group) -> None:
    """Sum each parameter's gradient over `group`; a copy that got none contributes zeros."""
    for p in params:
        grad = param_grad(p)
        if grad is None:
            grad = p.grad = torch.zeros_like(p)
        dist.all_reduce(grad, group=group)


def allreduce_data_parallel_grads(parameters: Iterable[torch.nn.Parameter]) -> None:
    world = ps.get_data_parallel_world_size()
    if world == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    # One flat buffer: one collective instead of one per parameter.
    flat = torch.cat([g.reshape(-1) for g in grads]).div_(world)
    dist.all_reduce(flat, group=ps.get_data_parallel_group())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def allreduce_stack_shared_grads(params) -> None:
    """Sum gradients of tables that every stage of a stack holds a copy of.

    Models mark such parameters with `shared_stack` (T5's per-stack relative-position
    bias: "encoder"/"decoder"; Transformer-XL's r_w_bias/r_r_bias: "xl_r_bias"); the
    copy on the stack's first stage is the owner, the others are also `shared`."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return
    by_stack = {}
    for p in params:
        stack = getattr(p, "shared_stack", None)
        if stack is not None:
            by_stack.setdefault(stack, []).append(p)
    for stack in sorted(by_stack):
        group, ranks = ps.get_pipeline_stack_group(stack)
        if len(ranks) > 1:
            _sum_grads(by_stack[stack], group)


def stage_copy_parameters(model) -> List[torch.nn.Parameter]:
    """The parameters `sum_stage_copies` reduces on this rank (a backend reduces them over
    data parallelism only after that sum)."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return []
    found = tied_embedding_parameters(model) if ps.is_rank_in_embedding_group(ignore_virtual=True) else []
    found += [p for chunk in _chunks(model) for p in chunk.parameters() if getattr(p, "shared_stack", None) is not None]
    return list({id(p): p for p in found}.values())


def sum_stage_copies(model) -> None:
    """Sum the gradients of parameters several pipeline stages hold a copy of."""
    params = [p for chunk in _chunks(model) for p in chunk.parameters()]
    allreduce_embedding_grads(model)
    allreduce_stack_shared_grads(params)


def finalize_model_grads(model) -> None:
    """The pipeline and sequence-parallel sums, once per step after the schedule (without a
    training backend; a backend's step() does this itself). No data-parallel reduction."""
    params = [p for chunk in _chunks(model) for p in chunk.parameters()]
    allreduce_sequence_parallel_gradients(params)
    sum_stage_copies(model)
