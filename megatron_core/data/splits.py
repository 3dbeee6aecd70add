"""`--split 949,50,1`: shares of the documents for train, valid and test, as in Megatron-LM.

The shares may be counts ("949,50,1") or fractions ("0.949,0.05,0.001"); they are
normalized. Fewer than three entries leave the missing splits empty ("98,2" has no test
split, "1" is all train); Megatron's older "949/50/1" form is accepted too. Documents are
split into contiguous ranges, rounded so that the ranges cover every document exactly once.
"""
from __future__ import annotations

import math
from typing import List, Tuple

from megatron_core.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")


def _bad(splits_string: str, why: str) -> DataError:
    return DataError(
        f'--split "{splits_string}" is not valid ({why}); give up to three non-negative '
        f'numbers separated by commas, e.g. "949,50,1" or "0.98,0.02".')


def parse_split(splits_string: str) -> List[float]:
    """Three normalized shares (train, valid, test) that sum to 1."""
    text = str(splits_string).strip()
    separator = "/" if "/" in text and "," not in text else ","
    entries = [entry.strip() for entry in text.split(separator)]
    if len(entries) > 3:
        raise _bad(splits_string, f"it has {len(entries)} entries")
    try:
        shares = [float(entry) for entry in entries]
    except ValueError:
        raise _bad(splits_string, "an entry is not a number") from None
    if any(not math.isfinite(s) or s < 0 for s in shares):
        raise _bad(splits_string, "an entry is negative or not finite")
    total = sum(shares)
    if total <= 0:
        raise _bad(splits_string, "the entries sum to zero")
    shares += [0.0] * (3 - len(shares))
    return [s / total for s in shares]


def split_boundaries(splits_string: str, size: int) -> List[int]:
    """[0, end_train, end_valid, size]: split k covers items [b[k], b[k+1])."""
    shares = parse_split(splits_string)
    bounds = [0]
    for share in shares:
        bounds.append(bounds[-1] + int(round(share * float(size))))
    # Rounding can overshoot or undershoot by a few items: move every end by the same
    # amount so the last one is exactly `size` (Megatron does the same).
    drift = bounds[-1] - size
    bounds = [0] + [b - drift for b in bounds[1:]]
    return bounds


def split_ranges(splits_string: str, size: int) -> List[Tuple[int, int]]:
    """(start, stop) per split, in the order train, valid, test; start == stop when empty."""
    bounds = split_boundaries(splits_string, size)
    return [(max(0, bounds[k]), max(0, bounds[k + 1])) for k in range(3)]
