"""The numbers reported, from sums over the scored tokens (Megatron-LM's tasks/zeroshot_gpt/
evaluate.py `evaluate_and_print_results`, without its clipping).

    loss           = sum of -log p(target) / scored targets      (nats per token; T - 1 targets
                                                                  for a stream of T tokens)
    ppl            = exp(loss)
    token_ratio    = (T - 1) / (W - 1)                            W = words of the text (inputs.py)
    adjusted_ppl   = exp(loss * token_ratio) = ppl ** token_ratio = exp(sum / (W - 1))

adjusted_ppl is the word-level perplexity: the same total log-likelihood spread over the
text's words instead of its tokens, so models with different tokenizers compare. Megatron
subtracts one from both counts (the first token, and so one word, is never predicted) and
clips the exponent at 20 (ppl at most 4.85e8); here nothing is clipped: an exponent past
what a float holds gives null, with adjusted_loss still reported.

    accuracy       = samples whose every target token is the argmax / samples
"""
from __future__ import annotations

import math
from typing import Dict, Optional


def _exp(value: float) -> Optional[float]:
    try:
        return math.exp(value)
    except OverflowError:
        return None


def perplexity_metrics(total_nll: float, scored: int, words: int, word_basis: str, unscored_words: int = 1) -> Dict:
    """unscored_words: 1 for a causal stream (its first word is never predicted), 0 for the
    masked-LM pseudo-perplexity (every token is scored)."""
    loss = total_nll / scored
    metrics = {"scored_tokens": scored, "loss": loss, "ppl": _exp(loss), "words": words, "word_basis": word_basis}
    if words > unscored_words:
        ratio = scored / (words - unscored_words)
        metrics.update(token_ratio=ratio, adjusted_loss=loss * ratio, adjusted_ppl=_exp(loss * ratio))
    else:
        metrics.update(token_ratio=None, adjusted_loss=None, adjusted_ppl=None)
    return metrics


def accuracy_metrics(correct: int, total: int) -> Dict:
    return {"correct": correct, "total": total, "accuracy": correct / total if total else None}
