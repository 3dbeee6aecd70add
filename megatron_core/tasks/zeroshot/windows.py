"""Which tokens of a long token stream each evaluation window reads and scores (Megatron-LM's
LM_Eval_Dataset, tasks/zeroshot_gpt/datasets.py `_LMDataset`).

A stream of T tokens has T - 1 targets: target j is token j + 1, predicted from tokens 0..j.
A window of seq_length S reads tokens start .. start + S - 1 and predicts the targets
start .. start + S - 1 (fewer at the end of the stream). Windows advance by the overlap
N (--overlapping-eval, default S: no overlap). The first window scores all its targets;
every later one scores only its last N (the ones no earlier window scored), so each target
is scored exactly once, with at least S - N tokens of context after the first window:

    T = 11 tokens (10 targets), S = 4, N = 2
    window 0: start 0, reads 0..3, scores targets 0..3
    window 1: start 2, reads 2..5, scores targets 4..5
    window 2: start 4, reads 4..7, scores targets 6..7
    window 3: start 6, reads 6..9, scores targets 8..9

Megatron-LM counts ceil((T - 1 - N) / N) + 1 windows, whose trailing ones can be pure
padding when S > 2N (they add nothing); here a window exists only when it scores at least
one target. The targets scored are the same, T - 1 in all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ...errors import ConfigError


@dataclass(frozen=True)
class Window:
    start: int          # the first token read
    length: int         # tokens read (= targets predicted): S, or fewer at the end of the stream
    first_scored: int   # the first scored position inside the window; the rest up to length are scored

    @property
    def scored(self) -> int:
        return self.length - self.first_scored


def lm_windows(num_tokens: int, seq_length: int, overlap: Optional[int] = None) -> List[Window]:
    """The windows of a stream of num_tokens tokens (module doc); overlap None means seq_length."""
    overlap = seq_length if overlap is None else overlap
    if seq_length < 1:
        raise ConfigError(f"--seq-length must be at least 1, got {seq_length}.")
    if not 1 <= overlap <= seq_length:
        raise ConfigError(f"--overlapping-eval must be between 1 and --seq-length {seq_length}, got {overlap}.")
    targets = num_tokens - 1
    windows = [Window(0, min(seq_length, targets), 0)] if targets > 0 else []
    start = overlap
    while start + seq_length - overlap < targets:
        length = min(seq_length, targets - start)
        windows.append(Window(start, length, seq_length - overlap))
        start += overlap
    return windows
