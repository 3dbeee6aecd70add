"""Drive a training backend for a few steps, and the serial reference it must equal.

    serial = serial_adamw_steps(build_model(serial=True), global_batches, step, optimizer_config)
    results = backend_steps(chunks, backend, global_batches, step, p2p_config)
    assert_params_match(chunks, serial.model)

`global_batches` is a list (one per step) of lists of micro-batches; a data-parallel rank
runs its contiguous share of each through the real schedule, with the loss it back-
propagates being `backend.scale_loss(loss)`. The reference is plain torch: one process,
the whole model, the mean loss over all micro-batches of a step, torch's
clip_grad_norm_, and torch.optim.AdamW with weight decay on matrices only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from megatron_core.mpu import parallel_state as ps
from megatron_core.mpu.init_methods import param_is_tensor_parallel
from megatron_core.mpu.layout import shard_tensor
from megatron_core.pipeline.schedules import get_forward_backward_func


@dataclass
class SerialRun:
    model: torch.nn.Module
    grad_norms: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)


def serial_adamw_steps(model: torch.nn.Module, global_batches: List[list], step: Callable, optimizer_config,
                       ) -> SerialRun:
    """Plain AdamW on one process; `optimizer_config` is a training.config.OptimizerConfig."""
    decayed = [p for p in model.parameters() if p.ndim > 1]
    exempt = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": optimizer_config.weight_decay},
              {"params": exempt, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=optimizer_config.lr, eps=optimizer_config.adam_eps,
                                  betas=(optimizer_config.adam_beta1, optimizer_config.adam_beta2))
    run = SerialRun(model)
    for batches in global_batches:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            loss = step(model, batch) / len(batches)
            loss.backward()
            total += loss.item()
        params = [p for p in model.parameters() if p.grad is not None]
        max_norm = optimizer_config.clip_grad if optimizer_config.clip_grad > 0 else float("inf")
        run.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        run.losses.append(total)
        optimizer.step()
    return run


def backend_steps(chunks: List[torch.nn.Module], backend, global_batches: List[list], step: Callable,
                  p2p_config=None, before_step: Optional[Callable] = None) -> list:
    """Run each global batch through the schedule and `backend.step()`; the StepResults.

    `before_step(index)` runs after the backward passes, before the step (to inject faults)."""
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    schedule = get_forward_backward_func()
    virtual = len(chunks) > 1
    results = []
    for index, batches in enumerate(global_batches):
        per_rank = len(batches) // dp
        mine = batches[dp_rank * per_rank:(dp_rank + 1) * per_rank]

        def forward_step_func(data_iterator, model):
            output = step(model, next(data_iterator))
            return output, lambda out: (backend.scale_loss(out), {"loss": out.detach()})

        backend.zero_grad()
        backend.prepare_accumulation(per_rank)
        iterators = [iter(mine) for _ in chunks]
        schedule(forward_step_func=forward_step_func, data_iterator=iterators if virtual else iterators[0],
                 model=chunks if virtual else chunks[0], num_microbatches=per_rank, p2p_config=p2p_config)
        if before_step is not None:
            before_step(index)
        results.append(backend.step())
    return results


def assert_params_match(chunks: List[torch.nn.Module], serial: torch.nn.Module, atol: float, rtol: float) -> int:
    """Every parameter of this rank's chunks equals its shard of the serial model's (chunk
    names go to serial names through the chunk's sharding map); returns how many matched."""
    full = dict(serial.named_parameters())
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    checked = 0
    for chunk in chunks:
        sharding = chunk.sharding_map() if hasattr(chunk, "sharding_map") else None
        for name, param in chunk.named_parameters():
            want = full[sharding.global_key(name) if sharding is not None else name].detach()
            if param_is_tensor_parallel(param):
                want = shard_tensor(want, param.partition_dim, tp_rank, tp, param.partition_stride)
            torch.testing.assert_close(param.detach().float(), want.float(), atol=atol, rtol=rtol,
                                       msg=lambda m: f"{name}: {m}")
            checked += 1
    return checked
