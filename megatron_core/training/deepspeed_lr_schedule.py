"""The loop's learning-rate schedule when ds.json has a "scheduler": DeepSpeed's sets the rate.

    schedule = EngineLearningRate(flags_schedule, engine.lr_scheduler)

It has the surface of LearningRateSchedule that the loop and the checkpoints use (`lr`,
`apply`, `step`, `state_dict`, `load_state_dict`). DeepSpeed's scheduler (WarmupLR,
WarmupDecayLR, WarmupCosineLR, ...) counts optimizer steps: the engine advances it inside
engine.step() after an applied update (not after an fp16 overflow), as our loop advances
its own. So:

* `lr` is the scheduler's rate for the coming update (its get_lr(), or before its first
  step the rate it set at construction; DeepSpeed's schedulers give every param group the
  same rate), which the log prints as "learning rate";
* `apply` writes those rates into the param groups before every step, as DeepSpeed's own
  step() does after each update; this also puts the right rate in place after a resume,
  where the scheduler's load_state_dict restores its count but not the groups' rates;
* weight decay stays the flags' schedule (--weight-decay, --start/--end-weight-decay),
  which DeepSpeed's schedulers do not touch, and `step` advances its sample count;
* the checkpoint holds both: Megatron's keys (num_steps, max_lr, ...) and the scheduler's
  (`last_batch_iteration`), in one dict that either loads from. A resume compares only the
  weight-decay values with the flags' (`schedule_values`): the flags' rates are not used.
"""
from __future__ import annotations

from .lr_schedule import LearningRateSchedule

WEIGHT_DECAY_VALUES = ("start_wd", "end_wd", "wd_incr_steps", "wd_incr_style")


class EngineLearningRate:
    def __init__(self, schedule: LearningRateSchedule, scheduler):
        self.schedule = schedule          # the flags' schedule: weight decay and the sample count
        self.scheduler = scheduler        # DeepSpeed's, built by deepspeed.initialize from ds.json

    def _rates(self):
        if getattr(self.scheduler, "last_batch_iteration", 0) < 0:
            # Not stepped yet (DeepSpeed 0.19.8 starts at -1): the rates it set at construction;
            # its get_lr() would warn on every call.
            return self.scheduler.get_last_lr()
        return self.scheduler.get_lr()

    @property
    def lr(self) -> float:
        return float(self._rates()[0])

    @property
    def weight_decay(self) -> float:
        return self.schedule.weight_decay

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def apply(self, optimizer) -> None:
        rates = self._rates()
        wd = self.schedule.weight_decay
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr
            group["weight_decay"] = wd * group.get("wd_mult", 1.0)

    def step(self, increment: int) -> None:
        """The flags' sample count only: the engine steps DeepSpeed's scheduler itself."""
        self.schedule.step(increment)

    def schedule_values(self) -> dict:
        """The values of the flags' schedule this run uses: the weight decay's."""
        return {key: value for key, value in self.schedule.schedule_values().items() if key in WEIGHT_DECAY_VALUES}

    def set_schedule_values(self, values: dict) -> None:
        self.schedule.set_schedule_values(values)

    def state_dict(self) -> dict:
        return {**self.schedule.state_dict(), **self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state)
        self.scheduler.load_state_dict(state)
