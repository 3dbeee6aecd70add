"""Make a rank's gradients final after all micro-batches of a step have run backward.

The sums the schedules leave to the end of the step:
  * sequence parallelism: LayerNorm/RMSNorm weights saw only this rank's sequence chunk,
    so their gradients are summed over the tensor-parallel group;
  * stage copies (pipeline/chunk.py): one serial parameter held by several pipeline stages
    (the word table on the first stage and on a tied last stage or T5's first decoder
    stage, T5's position and relative-bias tables, Transformer-XL's shared r_w_bias /
    r_r_bias) gets the sum of the gradients of all its copies on every copy, whatever the
    tying, so the copies take the same optimizer step and stay equal;
  * data parallelism is NOT done here: the training backend owns it (bucketed, maybe
    overlapped with backward, maybe reduce-scattered for the distributed optimizer) and
    calls `sum_stage_copies` itself in `step()` before its data-parallel reduction (buffer
    layouts differ between stages, so copies are summed while every element is whole) and
    the sequence-parallel sums after it. Code without a backend (tests) averages over data
    parallelism with `allreduce_data_parallel_grads`.

Every sum acts on `mpu.param_grad(p)`: the backend's fp32 `main_grad` when it keeps one,
else `.grad`.

Which stages hold a copy of which key is learned once per model from the chunks
themselves (one all_gather over the world on the first call, cached), so the sum runs
over exactly the holders, and a key whose copies do not name exactly one owner (the copy
the gradient norm counts) is reported instead of silently counted twice or not at all.
"""
from __future__ import annotations

import weakref
from typing import Dict, Iterable, List, Tuple

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..mpu import parallel_state as ps
from ..mpu.grads import allreduce_sequence_parallel_gradients, param_grad
from .chunk import unwrap_model


def _chunks(model) -> List[torch.nn.Module]:
    return [unwrap_model(chunk) for chunk in (model if isinstance(model, (list, tuple)) else [model])]


# key -> pipeline stages holding a copy, per model (keyed by its first chunk).
_HOLDERS: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[str, Tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def stage_copy_holders(chunks: List[torch.nn.Module]) -> Dict[str, Tuple[int, ...]]:
    """{key: stages holding a copy} for this model; collective over the world on the first
    call for a model (every rank calls it for its chunks of the same model)."""
    if chunks[0] in _HOLDERS:
        return _HOLDERS[chunks[0]]
    held, owners = set(), {}
    for chunk in chunks:
        for key, param in chunk.stage_copies().items():
            held.add(key)
            owners[key] = owners.get(key, 0) + (not getattr(param, "shared", False))
    mine = (tuple(ps.get_pipeline_model_parallel_ranks()), ps.get_pipeline_model_parallel_rank(),
            sorted(held), owners)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    pipelines: Dict[tuple, Dict[str, List[int]]] = {}
    owner_counts: Dict[tuple, Dict[str, int]] = {}
    for pipeline, stage, keys, counts in everyone:
        pipelines.setdefault(pipeline, {})
        owner_counts.setdefault(pipeline, {})
        for key in keys:
            pipelines[pipeline].setdefault(key, []).append(stage)
            owner_counts[pipeline][key] = owner_counts[pipeline].get(key, 0) + counts[key]
    holders = {key: tuple(sorted(stages)) for key, stages in pipelines[mine[0]].items()}
    for pipeline, keys in pipelines.items():
        if {key: tuple(sorted(stages)) for key, stages in keys.items()} != holders:
            raise ConfigError(f"the pipelines hold different stage copies (ranks {list(pipeline)} differ from "
                              f"{list(mine[0])}); build every model replica with the same stages.")
        for key, count in owner_counts[pipeline].items():
            if count != 1:
                raise ConfigError(f"{key} is held by pipeline stages {holders[key]} but {count} of the copies are "
                                  f"marked as its owner; mark exactly one (mark_stage_copy(..., owner=True)) so "
                                  f"the gradient norm counts it once.")
    _HOLDERS[chunks[0]] = holders
    return holders


def _local_stage_copies(chunks) -> Dict[str, List[torch.nn.Parameter]]:
    local: Dict[str, List[torch.nn.Parameter]] = {}
    for chunk in chunks:  # interleaved: one rank may hold several chunks' copies
        for key, param in chunk.stage_copies().items():
            local.setdefault(key, []).append(param)
    return local


def stage_copy_parameters(model) -> List[torch.nn.Parameter]:
    """This rank's parameters that `sum_stage_copies` reduces (a backend reduces them over
    data parallelism only after that sum). Collective on the first call for a model."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return []
    chunks = _chunks(model)
    stage_copy_holders(chunks)
    found = [p for params in _local_stage_copies(chunks).values() for p in params]
    return list({id(p): p for p in found}.values())


def sum_stage_copies(model) -> None:
    """Give every copy of a stage-copied parameter the sum of all copies' gradients."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return
    chunks = _chunks(model)
    holders = stage_copy_holders(chunks)
    local = _local_stage_copies(chunks)
    for key in sorted(holders):
        stages = holders[key]
        # Every rank asks for every group in the same order: creating one is collective.
        group = ps.get_pipeline_stages_group(stages)[0] if len(stages) > 1 else None
        if key not in local or (group is None and len(local[key]) == 1):
            continue
        copies = local[key]
        grads = [param_grad(p) for p in copies]
        total = sum(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, copies))
        if group is not None:
            dist.all_reduce(total, group=group)
        for p, g in zip(copies, grads):
            if g is None:
                p.grad = total.clone()
            else:
                g.copy_(total)


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


def finalize_model_grads(model) -> None:
    """The pipeline and sequence-parallel sums, once per step after the schedule (without a
    training backend; a backend's step() does this itself). No data-parallel reduction."""
    params = [p for chunk in _chunks(model) for p in chunk.parameters()]
    allreduce_sequence_parallel_gradients(params)
    sum_stage_copies(model)
