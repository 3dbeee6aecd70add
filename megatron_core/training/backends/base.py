"""The one surface the training loop talks to; native and DeepSpeed backends implement it.

The loop never asks which backend it has. Per iteration it does:

    lr_schedule.apply(backend.optimizer)
    backend.zero_grad()
    backend.prepare_accumulation(num_microbatches)    # before the schedule's backward passes
    forward_backward(backend.modules, ..., loss_func wrapped so its backward loss is backend.scale_loss(loss))
    result = backend.step()                           # reduce grads, unscale, clip, update
    if result.updated: lr_schedule.step(global_batch); else: count the skip

`step()` owns every gradient reduction: the sums of copies pipeline stages hold (tied
embedding, stack tables) and the sequence-parallel sums (pipeline/finalize_grads.py), and
the data-parallel mean (finishing or waiting for the overlapped one); the loop calls
neither finalize_model_grads nor any all-reduce itself. It then agrees on inf/nan across
every model-parallel and data-parallel rank, clips by the global norm over TP, PP and DP
(each shared copy counted once), and steps the optimizer unless the gradients overflowed.
`state_dict()` holds everything the backend owns (optimizer state, fp32 master weights
when kept, loss scaler kept under its own key so `--no-load-optim` can keep it);
`checkpoint_files()` says who puts it on disk (training/checkpointing/checkpointer.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class StepResult:
    updated: bool                    # False: skipped (fp16 overflow, or a nan/inf gradient)
    grad_norm: Optional[float]       # global norm before clipping; None when skipped
    loss_scale: Optional[float]      # the scale used for this step (None without scaling)


@runtime_checkable
class Backend(Protocol):
    # Holds `param_groups` (with "lr_mult"/"wd_mult") that lr_schedule.apply() writes into.
    optimizer: torch.optim.Optimizer
    # The modules the schedules run forward on: the model chunks themselves (native,
    # DeepSpeed ZeRO-0/1), or DeepSpeed's engine around them when its backward hooks must
    # see every micro-batch (ZeRO-2/3). Checkpoints and logging keep using the chunks.
    modules: List[torch.nn.Module]
    # Whether load_state_dict takes per-parameter optimizer state (a resharded checkpoint's, or
    # a DeepSpeed engine's files read per parameter): the native backend yes, DeepSpeed's engine no
    # (it loads only its own files at the sizes it saved them).
    loads_per_parameter: bool

    def zero_grad(self) -> None: ...

    def prepare_accumulation(self, num_microbatches: int) -> None: ...

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor: ...

    def step(self) -> StepResult: ...

    @property
    def loss_scale(self) -> Optional[float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    # The model's weights were replaced after the backend was built (a finetuning run's
    # pretrained encoder): whatever copies it keeps of them (fp32 masters, ZeRO partitions)
    # are taken from the weights again, the optimizer state kept.
    def weights_replaced(self) -> None: ...

    def describe(self) -> str: ...   # one line for the start of the log (Megatron prints its bucket count)

    # The schedule the loop applies and steps: the flags' own, or one that lets the
    # backend's engine set the rate (a ds.json "scheduler", deepspeed_lr_schedule.py).
    def learning_rate_schedule(self, schedule): ...

    # Who writes and reads this backend's checkpoint files (training/checkpointing/checkpointer.py's
    # CheckpointFiles): our layouts' files, or DeepSpeed's engine's.
    def checkpoint_files(self, run, chunks: List[torch.nn.Module]): ...
