"""Builders of the GPT sample index and the blending index: C++ when built, else numpy.

`pip install -e .` compiles csrc/dataset_helpers.cpp into
`megatron_core.data._dataset_helpers`; a source checkout that was never built (or
`MCORE_DATASET_HELPERS=numpy`) uses the numpy versions here. Both return identical
arrays (tests compare them), so a cache built by one is valid for the other.
"""
from __future__ import annotations

import logging
import os
from typing import Tuple

import numpy as np

logger = logging.getLogger(__name__)

try:
    if os.environ.get("MCORE_DATASET_HELPERS", "").lower() == "numpy":
        raise ImportError("MCORE_DATASET_HELPERS=numpy")
    from megatron_core.data import _dataset_helpers as _compiled
except ImportError:
    _compiled = None

BACKEND = "c++" if _compiled is not None else "numpy"
_announced = False


def _announce() -> None:
    # Say once per process which builder runs: the numpy one is much slower on big corpora.
    global _announced
    if not _announced:
        _announced = True
        if _compiled is not None:
            logger.info("dataset index helpers: compiled C++ module")
        else:
            logger.info("dataset index helpers: numpy fallback (run `pip install -e .` "
                        "to build the C++ module, which is much faster on large corpora)")


def _num_samples(num_epochs: int, tokens_per_epoch: int, seq_length: int,
                 drop_last_partial: bool, add_extra: int) -> int:
    usable = num_epochs * tokens_per_epoch - add_extra
    if usable <= 0:
        return 0
    return usable // seq_length if drop_last_partial else -(-usable // seq_length)


def numpy_build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int,
                           num_epochs: int, tokens_per_epoch: int,
                           drop_last_partial: bool = True, add_extra: int = 1) -> np.ndarray:
    """Numpy twin of the C++ `build_sample_idx`.

    Sample i covers tokens [i * seq_length, i * seq_length + seq_length + add_extra) of
    the stream formed by the documents doc_idx[0], doc_idx[1], ... back to back. Row i
    locates token i * seq_length as (position in doc_idx, offset): the document where
    token i * seq_length + add_extra - 1 lies, so that with add_extra=1 a sample ending
    exactly at a document's last token starts the next sample on that same token.
    """
    if seq_length < 1 or num_epochs < 1 or add_extra not in (0, 1) or len(doc_idx) == 0:
        raise ValueError("build_sample_idx needs seq_length >= 1, num_epochs >= 1, "
                         "add_extra in (0, 1) and a non-empty doc_idx")
    doc_idx = np.asarray(doc_idx)
    if doc_idx.min() < 0 or doc_idx.max() >= len(sizes):
        raise IndexError(f"doc_idx holds documents outside sizes (which has {len(sizes)} entries)")
    num_samples = _num_samples(num_epochs, tokens_per_epoch, seq_length, drop_last_partial, add_extra)
    # starts[j] = stream position of the first token of document doc_idx[j].
    starts = np.zeros(len(doc_idx) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes)[doc_idx], dtype=np.int64, out=starts[1:])
    total = int(starts[-1])

    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    # Rows whose sample would need tokens past the end (only a partial last sample).
    past_end = positions + add_extra > total
    pos = np.searchsorted(starts, positions + add_extra, side="left") - 1
    offset = positions - starts[np.maximum(pos, 0)]
    pos[past_end] = len(doc_idx) - 1
    offset[past_end] = int(sizes[doc_idx[-1]]) - add_extra

    dtype = np.int32 if len(doc_idx) < np.iinfo(np.int32).max else np.int64
    sample_idx = np.empty((num_samples + 1, 2), dtype=dtype)
    sample_idx[:, 0] = pos
    sample_idx[:, 1] = offset
    sample_idx[0] = 0  # the first sample always starts at the very beginning
    return sample_idx


def numpy_build_blending_indices(weights: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Numpy twin of the C++ `build_blending_indices`.

    Sample k goes to the dataset furthest behind its share, the largest
    weights[j] * max(k, 1) - taken[j] (lowest j on ties); the per-dataset counts then stay
    within one sample of weights * k. A plain Python loop: each step depends on the last.
    """
    weights = [float(w) for w in np.asarray(weights, dtype=np.float64).reshape(-1)]
    if not weights:
        raise ValueError("build_blending_indices needs at least one weight")
    if size < 0:
        raise ValueError("build_blending_indices needs a non-negative size")
    n = len(weights)
    dataset_index = np.empty(size, dtype=np.uint8 if n <= 255 else np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    taken = [0] * n
    which_list = [0] * size
    within_list = [0] * size
    datasets = range(1, n)
    for k in range(size):
        progress = float(max(k, 1))
        best, best_deficit = 0, weights[0] * progress - taken[0]
        for j in datasets:
            deficit = weights[j] * progress - taken[j]
            if deficit > best_deficit:
                best, best_deficit = j, deficit
        which_list[k] = best
        within_list[k] = taken[best]
        taken[best] += 1
    dataset_index[:] = which_list
    dataset_sample_index[:] = within_list
    return dataset_index, dataset_sample_index


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_epochs: int,
                     tokens_per_epoch: int, drop_last_partial: bool = True,
                     add_extra: int = 1) -> np.ndarray:
    """sample_idx [num_samples + 1, 2]: where each GPT sample starts (see the numpy twin)."""
    _announce()
    if _compiled is not None:
        return _compiled.build_sample_idx(
            np.ascontiguousarray(sizes, dtype=np.int32), np.ascontiguousarray(doc_idx, dtype=np.int32),
            int(seq_length), int(num_epochs), int(tokens_per_epoch), bool(drop_last_partial),
            int(add_extra))
    return numpy_build_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch,
                                  drop_last_partial, add_extra)


def build_blending_indices(weights: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) for `size` blended samples."""
    _announce()
    if _compiled is not None:
        return _compiled.build_blending_indices(np.ascontiguousarray(weights, dtype=np.float64),
                                                int(size))
    return numpy_build_blending_indices(weights, size)
