"""Learning rate and weight decay as pure functions of the step: Megatron's OptimizerParamScheduler.

A "step" is a sample, as in Megatron: the loop advances the schedule by the global batch
size after each successful update, so a batch-size ramp-up moves the schedule by samples
seen, not by iterations. `lr_at(s)` is the rate for the update that follows `s` samples.

    warmup   s <= W (W > 0):     init + (max - init) * s / W
    constant s > W:              max
    s > D (after decay):         min
    linear                       min + (max - min) * (1 - r)              r = (s - W) / (D - W)
    cosine                       min + (max - min) * (1 + cos(pi r)) / 2
    inverse-square-root          max(min, max * sqrt(max(W, 1)) / sqrt(max(s, 1)))
    WSD   s <= D - A:            max  (stable), then over the last A steps with q = (s - (D - A)) / A:
          linear 1 - q,  cosine (1 + cos(pi q)) / 2,  exponential 2 * 0.5**q - 1,  minus_sqrt 1 - sqrt(q)

Weight decay goes from start to end over `wd_incr_steps` (constant, linear or cosine) and
stays at end afterwards. The only state is the step count; a checkpoint also records the
values above under Megatron's keys (SAVED_VALUES), which a resume compares with the flags'
(training/checkpointing/resumed_schedule.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from .config import OptimizerConfig, SchedulerConfig, TrainingConfig

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
WSD_DECAY_STYLES = ("exponential", "linear", "cosine", "minus_sqrt")
WD_INCR_STYLES = ("constant", "linear", "cosine")
# Megatron's opt_param_scheduler keys -> our fields. Megatron records no warmup start and no
# WSD phase, so neither do we: a resume cannot tell whether they changed.
SAVED_VALUES = {"max_lr": "max_lr", "min_lr": "min_lr", "lr_warmup_steps": "warmup_steps",
                "lr_decay_steps": "decay_steps", "lr_decay_style": "decay_style", "start_wd": "start_wd",
                "end_wd": "end_wd", "wd_incr_steps": "wd_incr_steps", "wd_incr_style": "wd_incr_style"}


@dataclass
class LearningRateSchedule:
    max_lr: float
    min_lr: float = 0.0
    init_lr: float = 0.0              # warmup starts here (--lr-warmup-init)
    warmup_steps: float = 0           # may be fractional with --lr-warmup-fraction
    decay_steps: float = 1
    decay_style: str = "linear"
    wsd_decay_steps: Optional[float] = None
    wsd_decay_style: str = "exponential"
    start_wd: float = 0.0
    end_wd: float = 0.0
    wd_incr_steps: float = 1
    wd_incr_style: str = "constant"
    num_steps: int = 0                # samples consumed by successful updates so far

    def __post_init__(self):
        if self.decay_style not in DECAY_STYLES:
            raise ConfigError(f"--lr-decay-style {self.decay_style} is not one of {', '.join(DECAY_STYLES)}.")
        if self.decay_style == "WSD":
            if self.wsd_decay_style not in WSD_DECAY_STYLES:
                raise ConfigError(f"--lr-wsd-decay-style {self.wsd_decay_style} is not one of "
                                  f"{', '.join(WSD_DECAY_STYLES)}.")
            if not self.wsd_decay_steps or not 0 < self.wsd_decay_steps <= self.decay_steps:
                raise ConfigError(f"the WSD schedule needs --lr-wsd-decay-iters (or -samples) between 1 and the "
                                  f"decay length ({self.decay_steps} samples), got {self.wsd_decay_steps} samples.")
        if self.wd_incr_style not in WD_INCR_STYLES:
            raise ConfigError(f"--weight-decay-incr-style {self.wd_incr_style} is not one of "
                              f"{', '.join(WD_INCR_STYLES)}.")
        if not 0.0 <= self.min_lr <= self.max_lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must be between 0 and --lr ({self.max_lr}).")
        if not 0.0 <= self.init_lr <= self.max_lr:
            raise ConfigError(f"--lr-warmup-init ({self.init_lr}) must be between 0 and --lr ({self.max_lr}).")
        if self.decay_steps <= 0:
            raise ConfigError(f"the learning rate decays over {self.decay_steps} samples; set a positive "
                              f"--lr-decay-iters/--lr-decay-samples (or --train-iters/--train-samples).")
        if not 0 <= self.warmup_steps < self.decay_steps:
            raise ConfigError(f"the warmup ({self.warmup_steps} samples) must be shorter than the decay "
                              f"({self.decay_steps} samples); lower --lr-warmup-* or raise --lr-decay-*.")
        if not 0.0 <= self.start_wd <= self.end_wd:
            raise ConfigError(f"--start-weight-decay ({self.start_wd}) must be between 0 and "
                              f"--end-weight-decay ({self.end_wd}).")
        if self.wd_incr_style == "constant" and self.start_wd != self.end_wd:
            raise ConfigError(f"a constant weight decay cannot go from {self.start_wd} to {self.end_wd}; "
                              f"set --weight-decay-incr-style linear or cosine.")

    # --- the schedule -------------------------------------------------------------------
    def lr_at(self, step: float, max_lr: Optional[float] = None, min_lr: Optional[float] = None) -> float:
        max_lr = self.max_lr if max_lr is None else max_lr
        min_lr = self.min_lr if min_lr is None else min_lr
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.init_lr + (max_lr - self.init_lr) * float(step) / float(self.warmup_steps)
        if self.decay_style == "constant":
            return max_lr
        if step > self.decay_steps:
            return min_lr
        if self.decay_style == "inverse-square-root":
            return max(min_lr, max_lr * math.sqrt(max(self.warmup_steps, 1)) / math.sqrt(max(step, 1)))
        ratio = float(step - self.warmup_steps) / float(self.decay_steps - self.warmup_steps)
        if self.decay_style == "linear":
            coeff = 1.0 - ratio
        elif self.decay_style == "cosine":
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        else:  # WSD: stable at max_lr, then anneal over the last wsd_decay_steps
            anneal_start = self.decay_steps - self.wsd_decay_steps
            coeff = 1.0 if step <= anneal_start else _wsd_coeff(
                self.wsd_decay_style, float(step - anneal_start) / float(self.wsd_decay_steps))
        return min_lr + coeff * (max_lr - min_lr)

    def weight_decay_at(self, step: float) -> float:
        if step > self.wd_incr_steps or self.wd_incr_style == "constant":
            return self.end_wd
        ratio = float(step) / float(self.wd_incr_steps)
        coeff = ratio if self.wd_incr_style == "linear" else 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
        return self.start_wd + coeff * (self.end_wd - self.start_wd)

    # --- the state ----------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.lr_at(self.num_steps)

    @property
    def weight_decay(self) -> float:
        return self.weight_decay_at(self.num_steps)

    def step(self, increment: int) -> None:
        """Advance by `increment` samples (the global batch of a successful update)."""
        self.num_steps += increment

    def apply(self, optimizer) -> None:
        """Write the current rates into every param group, times its lr_mult / wd_mult."""
        lr, wd = self.lr, self.weight_decay
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = wd * group.get("wd_mult", 1.0)

    def schedule_values(self) -> dict:
        """What shapes the schedule, under Megatron's keys (SAVED_VALUES)."""
        return {key: getattr(self, name) for key, name in SAVED_VALUES.items()}

    def set_schedule_values(self, values: dict) -> None:
        """Replace some of schedule_values() (a resume that keeps the checkpoint's), checked as the flags are."""
        fields = {SAVED_VALUES[key]: value for key, value in values.items()}
        dataclasses.replace(self, **fields)          # raises the ConfigError of an impossible mix
        for name, value in fields.items():
            setattr(self, name, value)

    def state_dict(self) -> dict:
        # Megatron's keys, so its tools read ours.
        return {**self.schedule_values(), "num_steps": self.num_steps}

    def load_state_dict(self, state: dict) -> None:
        """The step count only: the values come from the flags, checked against the checkpoint's first."""
        # Older Megatron checkpoints call the step count num_iters.
        self.num_steps = int(state["num_steps"] if "num_steps" in state else state["num_iters"])


def _wsd_coeff(style: str, ratio: float) -> float:
    if style == "linear":
        return 1.0 - ratio
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if style == "exponential":
        return 2.0 * math.pow(0.5, ratio) - 1.0
    return 1.0 - math.sqrt(ratio)  # minus_sqrt


def schedule_from_config(optimizer: OptimizerConfig, scheduler: SchedulerConfig,
                         training: TrainingConfig) -> LearningRateSchedule:
    """Megatron's conversion: iteration counts become samples through the global batch size."""
    gbs = training.global_batch_size
    # A sample-based run also carries its derived train_iters: samples decide.
    if training.train_samples:
        decay_steps = scheduler.lr_decay_samples or training.train_samples
        wd_incr_steps = training.train_samples
        wsd_steps = scheduler.lr_wsd_decay_samples
        warmup_steps = scheduler.lr_warmup_samples
    elif training.train_iters:
        decay_steps = (scheduler.lr_decay_iters or training.train_iters) * gbs
        wd_incr_steps = training.train_iters * gbs
        wsd_steps = scheduler.lr_wsd_decay_iters * gbs if scheduler.lr_wsd_decay_iters is not None else None
        warmup_steps = scheduler.lr_warmup_iters * gbs
    else:
        raise ConfigError("set --train-iters or --train-samples so the learning rate schedule has a length.")
    if scheduler.lr_warmup_fraction is not None:
        warmup_steps = scheduler.lr_warmup_fraction * decay_steps
    start_wd = optimizer.weight_decay if scheduler.start_weight_decay is None else scheduler.start_weight_decay
    end_wd = optimizer.weight_decay if scheduler.end_weight_decay is None else scheduler.end_weight_decay
    return LearningRateSchedule(
        max_lr=optimizer.lr, min_lr=optimizer.min_lr, init_lr=scheduler.lr_warmup_init,
        warmup_steps=warmup_steps, decay_steps=decay_steps, decay_style=scheduler.lr_decay_style,
        wsd_decay_steps=wsd_steps, wsd_decay_style=scheduler.lr_wsd_decay_style,
        start_wd=start_wd, end_wd=end_wd, wd_incr_steps=wd_incr_steps,
        wd_incr_style=scheduler.weight_decay_incr_style)
