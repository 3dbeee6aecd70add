"""Accuracy and macro-F1 of predicted class indices (what CLUE reports, and sklearn's macro F1)."""
from __future__ import annotations

from typing import Sequence


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if not labels:
        return 0.0
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """The unweighted mean over classes of F1 = 2 tp / (2 tp + fp + fn); a class with no
    predictions and no examples counts 0, as sklearn's f1_score(average="macro",
    labels=range(num_classes), zero_division=0)."""
    if num_classes < 1:
        return 0.0
    scores = []
    for c in range(num_classes):
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_classes
