"""Validation: --eval-iters global batches forward only, the mean loss, Megatron's loss + PPL lines.

Each evaluation continues the validation stream where the previous one stopped (as
Megatron's), so successive evaluations see different samples. The losses are the forward
step's stats averaged over every micro-batch of every evaluated batch and over the
data-parallel group; they exist on the last pipeline stage only (None elsewhere).

A chunk whose state carries over from batch to batch (Transformer-XL's segment memory)
offers `evaluation_scope()`, a context manager that evaluation runs inside, so that
validation keeps its own state and training continues from where it left off.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional

import torch

from ..pipeline import P2PConfig
from .train_step import average_losses, forward_backward


def evaluate(forward_step_func: Callable, data_iterators: List, chunks: List[torch.nn.Module], eval_iters: int,
             num_microbatches: int, p2p_config: P2PConfig) -> Optional[Dict[str, float]]:
    for chunk in chunks:
        chunk.eval()
    stats: List[dict] = []
    with torch.no_grad(), contextlib.ExitStack() as scopes:
        for chunk in chunks:
            if hasattr(chunk, "evaluation_scope"):
                scopes.enter_context(chunk.evaluation_scope())
        for _ in range(eval_iters):
            stats.extend(forward_backward(forward_step_func, data_iterators, chunks, num_microbatches, p2p_config,
                                          forward_only=True))
    for chunk in chunks:
        chunk.train()
    return average_losses(stats)
