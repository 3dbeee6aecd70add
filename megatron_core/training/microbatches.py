"""Global batch size and micro-batches per step, as pure functions of the samples consumed.

Without ramp-up every step takes `global_batch_size` samples in
`global_batch_size / (micro_batch_size * data_parallel_size)` micro-batches per rank.

Megatron's --rampup-batch-size START INCR SAMPLES: the global batch starts at START and
grows by INCR, (global - START) / INCR times, every SAMPLES / that-many samples (a float);
after SAMPLES consumed samples it is the full global batch:

    consumed > SAMPLES:  global_batch_size
    otherwise:           START + INCR * int(consumed / (SAMPLES / ((global - START) / INCR)))

e.g. 16 8 300000 with --global-batch-size 1024: 126 increments, one per ~2381 samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import ConfigError
from .config import TrainingConfig


def num_microbatches(global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> int:
    per_step = micro_batch_size * data_parallel_size
    if global_batch_size % per_step != 0:
        raise ConfigError(
            f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
            f"{micro_batch_size} x data-parallel size {data_parallel_size} = {per_step}; use a multiple "
            f"of {per_step}.")
    return global_batch_size // per_step


@dataclass(frozen=True)
class BatchSchedule:
    global_batch_size: int
    micro_batch_size: int
    data_parallel_size: int = 1
    rampup_batch_size: Optional[Tuple[int, int, int]] = None   # (start, increment, ramp-up samples)

    def __post_init__(self):
        for name in ("global_batch_size", "micro_batch_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}.")
        num_microbatches(self.global_batch_size, self.micro_batch_size, self.data_parallel_size)
        if self.rampup_batch_size is None:
            return
        if len(self.rampup_batch_size) != 3:
            raise ConfigError(f"--rampup-batch-size takes three numbers (start batch, increment, ramp-up "
                              f"samples), got {list(self.rampup_batch_size)}.")
        start, increment, samples = self.rampup_batch_size
        per_step = self.micro_batch_size * self.data_parallel_size
        if start < 1 or increment < 1 or samples < 1:
            raise ConfigError(f"--rampup-batch-size {start} {increment} {samples} must be three positive integers.")
        if start > self.global_batch_size or (self.global_batch_size - start) % increment != 0:
            raise ConfigError(
                f"--rampup-batch-size {start} {increment} {samples} does not reach --global-batch-size "
                f"{self.global_batch_size}: the start must be at most the global batch and differ from it by a "
                f"multiple of the increment.")
        if start % per_step != 0 or increment % per_step != 0:
            raise ConfigError(
                f"--rampup-batch-size start {start} and increment {increment} must be multiples of "
                f"--micro-batch-size x data-parallel size = {per_step}, so every ramped batch splits into "
                f"whole micro-batches.")

    @classmethod
    def from_config(cls, training: TrainingConfig, data_parallel_size: int) -> "BatchSchedule":
        return cls(training.global_batch_size, training.micro_batch_size, data_parallel_size,
                   training.rampup_batch_size)

    def global_batch_size_at(self, consumed_samples: int) -> int:
        if self.rampup_batch_size is None:
            return self.global_batch_size
        start, increment, samples = self.rampup_batch_size
        num_increments = (self.global_batch_size - start) // increment
        if num_increments == 0 or consumed_samples > samples:
            return self.global_batch_size
        # Megatron's float arithmetic, kept exactly so both pick the same step boundaries.
        samples_per_increment = samples / num_increments
        return start + int(consumed_samples / samples_per_increment) * increment

    def num_microbatches_at(self, consumed_samples: int) -> int:
        return num_microbatches(self.global_batch_size_at(consumed_samples), self.micro_batch_size,
                                self.data_parallel_size)

    def train_iters_for_samples(self, train_samples: int) -> int:
        """Iterations of a sample-based run (Megatron's update_train_iters): steps through the
        ramp-up one batch at a time, then whole global batches; a partial last batch is dropped."""
        if self.rampup_batch_size is None:
            return train_samples // self.global_batch_size
        ramp_samples = self.rampup_batch_size[2]
        iterations = consumed = 0
        while consumed <= ramp_samples and consumed <= train_samples:
            consumed += self.global_batch_size_at(consumed)
            iterations += 1
        if train_samples > consumed:
            iterations += (train_samples - consumed) // self.global_batch_size
        return iterations
