"""A minimal Backend (the Protocol of training/backend.py): plain data-parallel all-reduce.

A stand-in until the native backend (buckets, overlap, ZeRO-1, fp32 master weights)
lands; the loop talks to either through the Protocol only. Per step: one flat all-reduce
of the gradients over the data-parallel group (mean), unscale and agree on inf/nan over
the model-parallel group when a loss scaler is on, clip by the global norm (TP and PP,
shared copies once: mpu.clip_grad_norm), optimizer step unless skipped.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .. import mpu
from ..pipeline.finalize_grads import allreduce_data_parallel_grads
from .backend import StepResult
from .config import RunConfig
from .loss_scaler import LossScaler, build_loss_scaler, found_inf_across, unscale_and_check
from .optimizer import build_optimizer
from .param_groups import build_param_groups


class SimpleBackend:
    def __init__(self, chunks: List[torch.nn.Module], optimizer: torch.optim.Optimizer,
                 scaler: Optional[LossScaler], clip_grad: float):
        self.chunks = chunks
        self.optimizer = optimizer
        self.scaler = scaler
        self.clip_grad = clip_grad
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def prepare_accumulation(self, num_microbatches: int) -> None:
        pass  # nothing is overlapped: the reduction happens in step()

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scaler.scale if self.scaler is not None else loss

    @property
    def loss_scale(self) -> Optional[float]:
        return self.scaler.scale if self.scaler is not None else None

    def step(self) -> StepResult:
        allreduce_data_parallel_grads(self.params)
        scale = self.loss_scale
        if self.scaler is not None:
            local_inf = unscale_and_check(self.params, self.scaler.inv_scale)
            found_inf = found_inf_across(mpu.get_model_parallel_group(), local_inf)
            self.scaler.update(found_inf)
            if found_inf:
                return StepResult(False, None, scale)
        if self.clip_grad > 0:
            norm = mpu.clip_grad_norm(self.params, self.clip_grad)
        else:
            norm = mpu.get_grad_norm(self.params)
        if not math.isfinite(norm):  # without a scaler a nan/inf gradient still must not reach the weights
            return StepResult(False, None, scale)
        self.optimizer.step()
        return StepResult(True, norm, scale)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])


def build_backend(chunks: List[torch.nn.Module], run: RunConfig) -> SimpleBackend:
    groups = build_param_groups(chunks, run.optimizer.weight_decay)
    return SimpleBackend(chunks, build_optimizer(groups, run.optimizer), build_loss_scaler(run.precision),
                         run.optimizer.clip_grad)
