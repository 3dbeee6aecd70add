"""Choosing the next token: pure tensor code, no processes.

The order is HF's (and Megatron's): repetition penalty on the raw logits, then
temperature, top-k, top-p. The distribution a sampled step draws from is

    p = softmax(l / T) restricted to the k largest logits (k = 0: all), then to the
        smallest set of the most probable tokens whose mass reaches top_p (top_p = 0: all),
        renormalised.

A draw is an inverse CDF over the candidates ordered by token id, with one uniform
number per sequence from a seeded generator: the same seed and the same candidates give
the same token whatever order or process produced them (tensor-parallel ranks included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0              # 0: no top-k filter
    top_p: float = 0.0          # 0 (or 1): no top-p filter
    repetition_penalty: float = 1.0   # CTRL / HF: > 1 makes tokens already present less likely
    seed: Optional[int] = None

    def __post_init__(self):
        if not self.greedy and not self.temperature > 0.0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}; use --greedy for argmax decoding.")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 (off) or more, got {self.top_k}.")
        if not 0.0 <= self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be between 0 (off) and 1, got {self.top_p}.")
        if not self.repetition_penalty > 0.0:
            raise ConfigError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}.")


def penalize_repeats(logits: torch.Tensor, previous_tokens: torch.Tensor, penalty: float,
                     vocab_start: int = 0) -> torch.Tensor:
    """logits [b, n] over token ids vocab_start .. vocab_start + n - 1; previous_tokens [b, t]
    (ids; negative entries are ignored). A token present gets l / penalty if l > 0, else
    l * penalty (HF's RepetitionPenaltyLogitsProcessor)."""
    if penalty == 1.0 or previous_tokens.numel() == 0:
        return logits
    local = previous_tokens - vocab_start
    inside = (local >= 0) & (local < logits.shape[1])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen.scatter_(1, local.clamp(0, logits.shape[1] - 1), inside)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """bool [b, n]: the most probable tokens until their mass reaches top_p (at least one)."""
    if top_p <= 0.0 or top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)


def candidate_probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution of one sampled step over the columns of `logits` [b, n] (already
    penalised; -inf marks tokens that may never be chosen, such as vocabulary padding)."""
    scaled = logits.float() / params.temperature
    if 0 < params.top_k < scaled.shape[1]:
        kth = scaled.topk(params.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    probs = probs.masked_fill(~keep_top_p(probs, params.top_p), 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Column index [b] of the inverse CDF of probs [b, n] at uniforms [b] in [0, 1)."""
    cdf = probs.cumsum(dim=-1)
    # A uniform past the (rounded) total picks the last column with mass.
    last = (probs > 0).long().cumsum(dim=-1).argmax(dim=-1)
    index = (cdf <= uniforms[:, None] * cdf[:, -1:]).sum(dim=-1)
    return torch.minimum(index, last)


def new_generator(seed: int) -> torch.Generator:
    """The CPU generator of the draws: the same seed gives the same uniforms on every rank."""
    return torch.Generator().manual_seed(int(seed))
