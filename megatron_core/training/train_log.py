"""What the run tells the user: Megatron's log line every --log-interval, validation lines,
TensorBoard scalars, a progress bar with ETA, and a closing summary.

Only the logging rank (the last rank, which holds the loss, as in Megatron's
print_rank_last) writes anything. Per interval the losses are averaged over the
iterations whose loss was finite; a nan/inf loss still shows ("lm loss: nan") when the
whole interval had no finite loss, and always counts in "number of nan iterations".

Throughput: tokens/s = global batch x seq-length / seconds per iteration; TFLOP/s per
device = model training FLOPs per token x tokens/s / world size; MFU against the device
peak (mfu.py), "n/a (CPU)" on CPU. TensorBoard (when `torch.utils.tensorboard` imports
and --tensorboard-dir is set) gets Megatron's scalar names: learning-rate, batch-size,
the loss names ("lm loss"), loss-scale, grad-norm, iteration-time, and
"<loss> validation" / "<loss> validation ppl". The tqdm bar appears only when stdout is
a terminal, so logs redirected to a file stay plain lines.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Tuple

from .log_line import perplexity, training_log_line, validation_log_lines
from .mfu import PeakThroughput
from .train_step import SkipCounter, StepOutcome


def _open_tensorboard(directory: Optional[str]):
    if not directory:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        print(f"note: --tensorboard-dir {directory} is ignored: tensorboard is not installed "
              f"(pip install tensorboard).", flush=True)
        return None
    return SummaryWriter(log_dir=directory, max_queue=1000)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled or not sys.stdout.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, leave=False)


@dataclass
class RunTotals:
    # (iteration, {loss name: value}) of the first and last training step and evaluation
    first_loss: Optional[Tuple[int, Dict[str, float]]] = None
    last_loss: Optional[Tuple[int, Dict[str, float]]] = None
    first_validation: Optional[Tuple[int, Dict[str, float]]] = None
    last_validation: Optional[Tuple[int, Dict[str, float]]] = None
    iterations: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class TrainingLogger:
    train_iters: int
    seq_length: int
    log_interval: int
    world_size: int
    peak: PeakThroughput
    flops_per_token: Optional[int]          # training FLOPs per token of the whole model
    is_logging_rank: bool
    tensorboard_dir: Optional[str] = None
    start_iteration: int = 0
    totals: RunTotals = field(default_factory=RunTotals)

    def __post_init__(self):
        self._writer = _open_tensorboard(self.tensorboard_dir) if self.is_logging_rank else None
        self._bar = _progress_bar(self.train_iters, self.start_iteration, self.is_logging_rank)
        self._sums: Dict[str, float] = {}
        self._finite_counts: Dict[str, int] = {}
        self._last: Dict[str, float] = {}
        self._iterations = 0
        self._interval_start = time.perf_counter()

    def print(self, line: str) -> None:
        if not self.is_logging_rank:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    # --- training --------------------------------------------------------------------------
    def after_step(self, iteration: int, consumed_samples: int, global_batch_size: int, learning_rate: float,
                   outcome: StepOutcome, skips: SkipCounter, warning: Optional[str]) -> None:
        self._iterations += 1
        self.totals.iterations += 1
        self.totals.tokens += global_batch_size * self.seq_length
        if warning:
            self.print(warning)
        if outcome.losses is not None:
            for name, value in outcome.losses.items():
                self._last[name] = value
                if math.isfinite(value):
                    self._sums[name] = self._sums.get(name, 0.0) + value
                    self._finite_counts[name] = self._finite_counts.get(name, 0) + 1
            if self.totals.first_loss is None:
                self.totals.first_loss = (iteration, dict(outcome.losses))
            self.totals.last_loss = (iteration, dict(outcome.losses))
        if self._bar is not None:
            self._bar.update(1)
            if outcome.losses:
                self._bar.set_postfix({k: f"{v:.3f}" for k, v in outcome.losses.items()}, refresh=False)
        if iteration % self.log_interval == 0 or iteration == self.train_iters:
            self._log_interval(iteration, consumed_samples, global_batch_size, learning_rate, outcome, skips)

    def _log_interval(self, iteration, consumed_samples, global_batch_size, learning_rate, outcome, skips) -> None:
        seconds = time.perf_counter() - self._interval_start
        self.totals.seconds += seconds
        per_iteration = seconds / max(self._iterations, 1)
        tokens_per_second = global_batch_size * self.seq_length / per_iteration if per_iteration > 0 else 0.0
        tflops = (self.flops_per_token * tokens_per_second / self.world_size / 1e12
                  if self.flops_per_token else None)
        losses = {name: (self._sums[name] / self._finite_counts[name]) if self._finite_counts.get(name)
                  else self._last[name] for name in self._last}
        line = training_log_line(
            iteration=iteration, train_iters=self.train_iters, consumed_samples=consumed_samples,
            elapsed_ms_per_iteration=per_iteration * 1000.0, global_batch_size=global_batch_size,
            losses=losses, loss_scale=outcome.loss_scale if outcome.loss_scale is not None else 1.0,
            learning_rate=learning_rate, throughput_tflops=tflops, grad_norm=outcome.grad_norm,
            skipped_iterations=skips.skipped, nan_iterations=skips.nan, tokens_per_second=tokens_per_second,
            mfu=self.peak.mfu(tflops) if tflops is not None else None, timestamp=datetime.now())
        self.print(line)
        if self._writer is not None:
            scalars = {"learning-rate": learning_rate, "batch-size": global_batch_size,
                       "iteration-time": per_iteration, **losses}
            if outcome.loss_scale is not None:
                scalars["loss-scale"] = outcome.loss_scale
            if outcome.grad_norm is not None:
                scalars["grad-norm"] = outcome.grad_norm
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, iteration)
        skips.reset_interval()
        self._sums.clear()
        self._finite_counts.clear()
        self._last.clear()
        self._iterations = 0
        self._interval_start = time.perf_counter()

    # --- validation ----------------------------------------------------------------------
    def validation(self, at: str, iteration: int, losses: Optional[Dict[str, float]]) -> None:
        if losses is None or not self.is_logging_rank:
            return
        if self.totals.first_validation is None:
            self.totals.first_validation = (iteration, dict(losses))
        self.totals.last_validation = (iteration, dict(losses))
        for line in validation_log_lines(at, losses):
            self.print(line)
        if self._writer is not None:
            for name, value in losses.items():
                self._writer.add_scalar(f"{name} validation", value, iteration)
                self._writer.add_scalar(f"{name} validation ppl", perplexity(value), iteration)

    def scalars(self, values: Dict[str, float], iteration: int) -> None:
        """TensorBoard scalars under the given names (a finetuning run's validation metrics)."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, iteration)

    def pause_clock(self) -> float:
        """Time spent outside training steps (evaluation) does not count in the interval's rate."""
        return time.perf_counter()

    def resume_clock(self, paused_at: float) -> None:
        self._interval_start += time.perf_counter() - paused_at

    # --- the end -------------------------------------------------------------------------
    def summary_lines(self, skips: SkipCounter) -> List[str]:
        t = self.totals
        lines = []
        if t.first_loss and t.last_loss:
            (first_it, first), (last_it, last) = t.first_loss, t.last_loss
            lines.append("training: " + ", ".join(
                f"{name} {first[name]:.4f} (iteration {first_it}) -> {last[name]:.4f} (iteration {last_it})"
                for name in last if name in first))
        if t.first_validation and t.last_validation:
            (first_it, first), (last_it, last) = t.first_validation, t.last_validation
            lines.append("validation: " + ", ".join(
                f"{name} {first[name]:.4f} (iteration {first_it}) -> {last[name]:.4f} (iteration {last_it}); "
                f"PPL {perplexity(first[name]):.1f} -> {perplexity(last[name]):.1f}"
                for name in last if name in first))
        rate = t.tokens / t.seconds if t.seconds > 0 else 0.0
        lines.append(f"{t.iterations} iterations, {t.tokens:,} tokens in {t.seconds:.1f} s ({rate:,.0f} tokens/s); "
                     f"skipped iterations: {skips.total_skipped}, nan iterations: {skips.total_nan}")
        return lines

    def close(self, skips: SkipCounter) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for line in self.summary_lines(skips):
            self.print("summary: " + line)
        if self._writer is not None:
            self._writer.close()
