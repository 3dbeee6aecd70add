"""Loss scaling for fp16: Megatron's dynamic and constant grad scalers, and found-inf agreement.

The dynamic scaler follows Megatron's DynamicGradScaler exactly:
- an overflow resets the clean-step count and spends one unit of hysteresis; once the
  hysteresis is spent (<= 0) the scale is multiplied by the backoff factor, floored at the
  minimum scale, and *every further overflow* backs off again;
- a clean step does NOT refill the hysteresis: only `growth_interval` clean steps in a row
  do, together with multiplying the scale by the growth factor.
So with hysteresis 2, overflows at steps 1 and 5 with clean steps between still halve the
scale at step 5, as in Megatron.

Every rank that holds part of a model must skip the same steps: `found_inf_across`
takes the MAX of the local flags over the model-parallel groups before the scaler sees it.
A skipped step is counted (`consecutive_skips`) so the loop can stop a run that only
overflows (--max-skipped-iterations).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .config import PrecisionConfig


class LossScaler:
    """The common face: `scale`, `update(found_inf)`, skip counting and state."""

    def __init__(self, scale: float):
        if not scale > 0:
            raise ConfigError(f"the loss scale must be positive, got {scale}.")
        self._scale = float(scale)
        self.consecutive_skips = 0   # steps skipped in a row, reset by the first clean step

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def inv_scale(self) -> float:
        return 1.0 / self._scale

    def update(self, found_inf: bool) -> None:
        self.consecutive_skips = self.consecutive_skips + 1 if found_inf else 0
        self._adjust(bool(found_inf))

    def _adjust(self, found_inf: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {"consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive_skips = int(state.get("consecutive_skips", 0))


class ConstantLossScaler(LossScaler):
    """--loss-scale S: the scale never changes; an overflowed step is still skipped."""


class DynamicLossScaler(LossScaler):
    def __init__(self, initial_scale: float = 2.0 ** 32, min_scale: float = 1.0, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 1000, hysteresis: int = 2):
        super().__init__(initial_scale)
        if not 0 < min_scale <= initial_scale:
            raise ConfigError(f"--min-loss-scale ({min_scale}) must be positive and at most "
                              f"--initial-loss-scale ({initial_scale}).")
        if growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0:
            raise ConfigError(f"the loss scale must grow by a factor > 1 and back off by one in (0, 1), "
                              f"got {growth_factor} and {backoff_factor}.")
        if int(growth_interval) != growth_interval or growth_interval < 1:
            raise ConfigError(f"--loss-scale-window must be a positive whole number, got {growth_interval}.")
        if int(hysteresis) != hysteresis or hysteresis < 1:
            raise ConfigError(f"--hysteresis must be a positive whole number, got {hysteresis}.")
        self.min_scale = float(min_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.hysteresis = int(hysteresis)
        self._growth_tracker = 0
        self._hysteresis_tracker = self.hysteresis

    def _adjust(self, found_inf: bool) -> None:
        if found_inf:
            self._growth_tracker = 0
            self._hysteresis_tracker -= 1
            if self._hysteresis_tracker <= 0:
                self._scale = max(self._scale * self.backoff_factor, self.min_scale)
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._growth_tracker = 0
                self._hysteresis_tracker = self.hysteresis
                self._scale = self._scale * self.growth_factor

    def state_dict(self) -> dict:
        # Megatron's keys and types (the scale as a one-element float tensor).
        return {"scale": torch.tensor([self._scale], dtype=torch.float32),
                "growth_tracker": self._growth_tracker,
                "hysteresis_tracker": self._hysteresis_tracker,
                **super().state_dict()}

    def load_state_dict(self, state: dict) -> None:
        scale = state["scale"]
        self._scale = float(scale.reshape(-1)[0]) if isinstance(scale, torch.Tensor) else float(scale)
        self._growth_tracker = int(state["growth_tracker"])
        self._hysteresis_tracker = int(state["hysteresis_tracker"])
        super().load_state_dict(state)


def build_loss_scaler(precision: PrecisionConfig) -> Optional[LossScaler]:
    """Megatron's choice: --loss-scale gives a constant scaler (fp16 or bf16), fp16 without it a
    dynamic one, bf16 and fp32 none."""
    if not (precision.fp16 or precision.bf16):
        return None
    if precision.loss_scale:
        return ConstantLossScaler(precision.loss_scale)
    if precision.fp16:
        return DynamicLossScaler(initial_scale=precision.initial_loss_scale, min_scale=precision.min_loss_scale,
                                 growth_interval=precision.loss_scale_window, hysteresis=precision.hysteresis)
    return None


def unscale_and_check(parameters: Iterable[torch.Tensor], inv_scale: float) -> bool:
    """Multiply every gradient by `inv_scale` in place; True if any of them holds inf or nan."""
    # One flag per device, read once at the end: no host sync per gradient.
    flags = {}
    for param in parameters:
        grad = param.grad
        if grad is None:
            continue
        grad.mul_(inv_scale)
        bad = torch.logical_not(torch.isfinite(grad).all())
        flags[grad.device] = bad if grad.device not in flags else flags[grad.device] | bad
    return any(bool(flag) for flag in flags.values())


Groups = Union[None, "dist.ProcessGroup", Sequence[Optional["dist.ProcessGroup"]]]


def found_inf_across(groups: Groups, local_flag: bool) -> bool:
    """True if any rank of the given group(s) found inf/nan (all-reduce MAX, group after group).

    Pass the model-parallel group so every TP and PP rank of a replica skips together (data
    parallel ranks agree already once gradients are reduced), or several groups in turn.
    `None` in the list means the whole world; a single `None` too.
    """
    if not dist.is_initialized():
        return bool(local_flag)
    group_list = list(groups) if isinstance(groups, (list, tuple)) else [groups]
    flag = None
    for group in group_list:
        if flag is None:
            flag = torch.tensor([1.0 if local_flag else 0.0], dtype=torch.float32, device=_device_for(group))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(local_flag) if flag is None else bool(flag.item() > 0)


def _device_for(group) -> torch.device:
    # NCCL reduces CUDA tensors only, gloo CPU tensors.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
