"""When a run should save and stop before --train-iters: Megatron-LM's exit flags.

    --exit-interval N            after an iteration that is a multiple of N
    --exit-duration-in-mins M    once M minutes have passed since training started
    --exit-signal-handler        once SIGTERM arrived (a scheduler's notice before it kills the job)

The last two are per-process observations; every rank must stop after the same iteration
(a rank that stops alone leaves the others waiting in a collective), so they are agreed on
with one all-reduce (MAX) per iteration, and only when one of the flags is set.
"""
from __future__ import annotations

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist


class ExitConditions:
    def __init__(self, exit_interval: Optional[int], exit_duration_in_mins: Optional[float], signal_handler: bool):
        self.exit_interval = exit_interval
        self.duration = exit_duration_in_mins
        self.started = time.time()
        self.received_signal = False
        self.listens = signal_handler
        if signal_handler:
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received_signal = True

    def reason(self, iteration: int) -> Optional[str]:
        """Why to stop after `iteration` (the same on every rank), or None."""
        if self.exit_interval and iteration % self.exit_interval == 0:
            return f"--exit-interval {self.exit_interval}"
        if self.duration is None and not self.listens:
            return None
        over_time = self.duration is not None and (time.time() - self.started) / 60.0 > self.duration
        flags = torch.tensor([float(over_time), float(self.received_signal)], device=_device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1] > 0:
            return "SIGTERM received (--exit-signal-handler)"
        if flags[0] > 0:
            return f"--exit-duration-in-mins {self.duration:g} reached"
        return None


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
