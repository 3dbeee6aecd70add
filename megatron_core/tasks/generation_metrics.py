"""Scores of generated text against references, on characters (Chinese has no spaces to split words at).

Both strings lose their whitespace first (a detokenizer may put spaces between tokens).
With l = the length of their longest common subsequence of characters,

    exact match   1 if prediction == reference else 0
    ROUGE-L       precision P = l / len(prediction), recall R = l / len(reference),
                  F1 = 2 P R / (P + R)       (0 when l = 0; 1 when both are empty)

Corpus scores are the means over the examples. Worked example: prediction "北京大学",
reference "北京的大学": l = 4 ("北京大学"), P = 4/4, R = 4/5, F1 = 2 * 1 * 0.8 / 1.8 = 8/9.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple


def _characters(text: str) -> str:
    return "".join(text.split())


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of a and b: one row of the O(len a * len b) table."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for char in a:
        diagonal = 0                       # row[j - 1] of the previous row
        for j, other in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if char == other else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (module doc)."""
    prediction, reference = _characters(prediction), _characters(reference)
    if not prediction and not reference:
        return 1.0
    common = lcs_length(prediction, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(_characters(prediction) == _characters(reference))


def corpus_scores(pairs: Iterable[Tuple[str, str]]) -> Dict[str, float]:
    """{"examples", "exact_match", "rouge_l_f1"} over (prediction, reference) pairs, means in [0, 1]."""
    pairs = list(pairs)
    count = len(pairs)
    if count == 0:
        return {"examples": 0, "exact_match": 0.0, "rouge_l_f1": 0.0}
    return {"examples": count,
            "exact_match": sum(exact_match(p, r) for p, r in pairs) / count,
            "rouge_l_f1": sum(rouge_l_f1(p, r) for p, r in pairs) / count}
