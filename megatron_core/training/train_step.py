"""One global batch: forward and backward through the pipeline schedule, then one optimizer step.

    schedule.apply(backend.optimizer)               # this step's lr and weight decay
    backend.zero_grad(); backend.prepare_accumulation(num_microbatches)
    forward_backward(...)                           # each micro-batch's loss through backend.scale_loss
    result = backend.step()     # stage-copy sums, DP reduction, SP sums, unscale, found-inf, clip, update
    schedule.step(global_batch) only if result.updated

Every gradient reduction is the backend's (backends/native.py: the stage copies first, then
buckets, overlap or the ZeRO-1 reduce-scatter, then the sequence-parallel sums), so the
loop calls no finalize_model_grads and no all-reduce of its own. The losses returned are the
forward step's stats, averaged over the micro-batches and the data-parallel group: the
mean over the global batch, valid on the last pipeline stage (None elsewhere).

`SkipCounter` keeps Megatron's "number of skipped iterations" and "number of nan
iterations" and stops the run with one sentence after --max-skipped-iterations
consecutive skipped updates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from .. import mpu
from ..errors import UserError
from ..pipeline import P2PConfig, get_forward_backward_func
from .backends.base import Backend
from .lr_schedule import LearningRateSchedule


class TrainingStopped(UserError):
    """The run cannot go on (too many consecutive skipped steps); the message says why and what to do."""


@dataclass
class StepOutcome:
    losses: Optional[Dict[str, float]]   # mean over the global batch; None off the last pipeline stage
    updated: bool
    grad_norm: Optional[float]
    loss_scale: Optional[float]          # after this step's update, as Megatron logs it (None: no scaling)


def _model_arg(chunks: List[torch.nn.Module]):
    return chunks if len(chunks) > 1 else chunks[0]


def average_losses(stats: List[Dict[str, torch.Tensor]]) -> Optional[Dict[str, float]]:
    """Mean of each stat over the micro-batches of this rank, then over the data-parallel group."""
    if not mpu.is_pipeline_last_stage(ignore_virtual=True) or not stats:
        return None
    names = list(stats[0])
    values = torch.stack([torch.stack([s[name].detach().float().reshape(()) for s in stats]).mean()
                          for name in names])
    if mpu.get_data_parallel_world_size() > 1:
        dist.all_reduce(values, group=mpu.get_data_parallel_group())
        values /= mpu.get_data_parallel_world_size()
    return dict(zip(names, values.tolist()))


def forward_backward(forward_step_func: Callable, data_iterators: List, chunks: List[torch.nn.Module],
                     num_microbatches: int, p2p_config: P2PConfig, forward_only: bool = False,
                     scale_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> List[dict]:
    """The schedule of the current parallel state over one global batch; the stats of the last stage.

    `data_iterators` holds one iterator per model chunk, each over the same micro-batch
    stream (the interleaved schedule reads chunk i's input from iterator i)."""
    step = forward_step_func
    if scale_loss is not None:
        def step(iterator, model):
            output, loss_func = forward_step_func(iterator, model)

            def scaled_loss_func(out):
                loss, stats = loss_func(out)
                return scale_loss(loss), stats
            return output, scaled_loss_func
    return get_forward_backward_func()(
        forward_step_func=step, data_iterator=_model_arg(data_iterators), model=_model_arg(chunks),
        num_microbatches=num_microbatches, p2p_config=p2p_config, forward_only=forward_only)


def train_step(forward_step_func: Callable, data_iterators: List, chunks: List[torch.nn.Module], backend: Backend,
               schedule: LearningRateSchedule, num_microbatches: int, global_batch_size: int,
               p2p_config: P2PConfig) -> StepOutcome:
    for chunk in chunks:
        chunk.train()
    schedule.apply(backend.optimizer)
    backend.zero_grad()
    backend.prepare_accumulation(num_microbatches)
    stats = forward_backward(forward_step_func, data_iterators, chunks, num_microbatches, p2p_config,
                             scale_loss=backend.scale_loss)
    result = backend.step()
    if result.updated:
        schedule.step(global_batch_size)
    # Megatron's log line shows the scale the scaler holds after this step (grown or backed off).
    return StepOutcome(average_losses(stats), result.updated, result.grad_norm, backend.loss_scale)


@dataclass
class SkipCounter:
    max_consecutive: Optional[int] = None   # --max-skipped-iterations
    skipped: int = 0                        # skipped updates since the last log line
    nan: int = 0                            # iterations with a nan/inf loss since the last log line
    consecutive: int = 0
    total_skipped: int = 0
    total_nan: int = 0

    def record(self, iteration: int, outcome: StepOutcome) -> Optional[str]:
        """Count the step; returns a warning line when its loss is nan/inf. Raises TrainingStopped
        after too many consecutive skips."""
        warning = None
        if outcome.losses is not None:
            bad = {name: value for name, value in outcome.losses.items() if not math.isfinite(value)}
            if bad:
                self.nan += 1
                self.total_nan += 1
                warning = (f"warning: iteration {iteration}: " +
                           ", ".join(f"{name} is {value}" for name, value in bad.items()) +
                           ("; the update was skipped" if not outcome.updated else ""))
        if outcome.updated:
            self.consecutive = 0
            return warning
        self.skipped += 1
        self.total_skipped += 1
        self.consecutive += 1
        if self.max_consecutive is not None and self.consecutive >= self.max_consecutive:
            scale = f" (loss scale {outcome.loss_scale})" if outcome.loss_scale is not None else ""
            raise TrainingStopped(
                f"stopped at iteration {iteration}: the last {self.consecutive} updates were all skipped for "
                f"inf/nan gradients{scale}; lower --lr, raise --min-loss-scale or use --bf16, or raise "
                f"--max-skipped-iterations.")
        return warning

    def reset_interval(self) -> None:
        self.skipped = self.nan = 0
