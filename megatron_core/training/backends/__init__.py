"""The training backends behind one surface (base.py's Backend): native.py, or DeepSpeed's engine
(deepspeed.py) with --deepspeed. The loop calls build_training_backend and never asks which."""
from __future__ import annotations

from typing import List

import torch

from .base import Backend, StepResult

__all__ = ["Backend", "StepResult", "build_training_backend"]


def build_training_backend(chunks: List[torch.nn.Module], run) -> Backend:
    """The one place that picks the backend: DeepSpeed with --deepspeed, else native.
    `run` is the RunConfig (its deepspeed.resolved holds the checked ds.json)."""
    if run.deepspeed.deepspeed:
        from .deepspeed import DeepSpeedBackend
        return DeepSpeedBackend(chunks, run.optimizer, run.deepspeed.resolved)
    from .native import build_backend
    return build_backend(chunks, run.optimizer, run.precision, run.parallel)
