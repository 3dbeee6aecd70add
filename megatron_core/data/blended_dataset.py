"""Blend several datasets in fixed proportions, deterministically.

`--data-path 0.3 data/news 0.7 data/wiki` draws 30% of the samples from news and 70% from
wiki. Sample k of the blend comes from the dataset furthest behind its share at that
point (see index_helpers.build_blending_indices), so after any k samples each dataset has
supplied its weight times k to within one sample, and the order is the same on every run.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from megatron_core.data.dataset_cache import IndexCache, load_or_build
from megatron_core.data.index_helpers import build_blending_indices
from megatron_core.errors import DataError


def parse_data_path(data_path: Union[str, Sequence[str]]) -> Tuple[List[float], List[str]]:
    """`["0.3", "a", "0.7", "b"]` -> ([0.3, 0.7], ["a", "b"]); `["a"]` -> ([1.0], ["a"]).

    Weights need not sum to one; they are normalized. A string is split on whitespace.
    """
    items = data_path.split() if isinstance(data_path, str) else [str(x) for x in data_path]
    if not items:
        raise DataError("--data-path is empty; give a dataset prefix, or weight-prefix pairs "
                        "such as `0.3 data/news_text_document 0.7 data/wiki_text_document`.")
    if len(items) == 1:
        return [1.0], items
    if len(items) % 2 != 0:
        raise DataError(f"--data-path has {len(items)} entries; with several datasets give "
                        f"weight-prefix pairs, e.g. `0.3 data/a_text_document 0.7 data/b_text_document`.")
    weights, prefixes = [], []
    for weight_text, prefix in zip(items[0::2], items[1::2]):
        try:
            weight = float(weight_text)
        except ValueError:
            raise DataError(f'--data-path entry "{weight_text}" (before {prefix}) is not a '
                            f"weight; give weight-prefix pairs such as `0.3 {prefix}`.") from None
        if not np.isfinite(weight) or weight < 0:
            raise DataError(f"--data-path weight {weight_text} of {prefix} must be a "
                            f"non-negative number.")
        weights.append(weight)
        prefixes.append(prefix)
    total = sum(weights)
    if total <= 0:
        raise DataError("--data-path weights sum to zero; give at least one dataset a positive weight.")
    return [w / total for w in weights], prefixes


class BlendedDataset:
    """`size` samples drawn from `datasets` in proportion to `weights` (normalized here).

    Each dataset must carry a `description` dict (GPTDataset does): the blending index is
    cached under the md5 of those descriptions, the weights and the size. The index goes
    to `cache_dir`, or next to the first dataset's own index cache.
    """

    def __init__(self, datasets: Sequence, weights: Sequence[float], size: int,
                 cache_dir: Optional[str] = None):
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"BlendedDataset got {len(datasets)} datasets and {len(weights)} weights")
        weights = np.asarray(weights, dtype=np.float64)
        if not np.all(weights > 0):
            # A zero weight could still win a float tie at deficit 0; leave such datasets out.
            raise DataError(f"blending weights {weights.tolist()} must all be positive; drop "
                            f"the datasets you do not want instead of giving them weight 0.")
        self.datasets = list(datasets)
        self.weights = weights / weights.sum()
        self.size = int(size)
        self.description = {
            "class": type(self).__name__,
            "datasets": [d.description for d in self.datasets],
            "weights": [float(w) for w in self.weights],
            "size": self.size,
        }
        if cache_dir is None:
            cache_dir = os.path.dirname(getattr(self.datasets[0], "cache_files_prefix", "")) or None
        cache = IndexCache(cache_dir, self.description, ("dataset_index", "dataset_sample_index")) \
            if cache_dir else None
        arrays, self.cache_hit = load_or_build(cache, self._build)
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]
        self.unique_hash = cache.hash if cache else None
        self._check_enough_samples()

    def _build(self):
        dataset_index, dataset_sample_index = build_blending_indices(self.weights, self.size)
        return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}

    def _check_enough_samples(self) -> None:
        needed = np.bincount(np.asarray(self.dataset_index, dtype=np.int64),
                             minlength=len(self.datasets))
        for k, dataset in enumerate(self.datasets):
            if needed[k] > len(dataset):
                name = getattr(dataset, "path_prefix", f"dataset {k}")
                raise DataError(
                    f"the blend needs {needed[k]} samples from {name} but it provides "
                    f"{len(dataset)}; build it with at least that many samples.")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int):
        if idx < 0:
            idx += self.size
        if not 0 <= idx < self.size:
            raise IndexError(f"sample {idx} out of range for a BlendedDataset of {self.size} samples")
        k = int(self.dataset_index[idx])
        sample = self.datasets[k][int(self.dataset_sample_index[idx])]
        return {"dataset_id": k, **sample}
