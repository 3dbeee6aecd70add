"""A small dataset read for several epochs, each in its own shuffled order, as one long index.

Finetuning runs many epochs over a few thousand samples. Laying the epochs end to end
(sample i is item order_e[i mod n] of epoch e = i // n, order_e a permutation fixed by
(seed, e)) lets the pretraining sampler serve it: global batch k is still samples
[k G, (k + 1) G) whatever the data-parallel size, and a run resumes from its count of
consumed samples.
"""
from __future__ import annotations

import numpy as np

from megatron_core.errors import DataError


class EpochShuffledDataset:
    def __init__(self, dataset, num_samples: int, seed: int, shuffle: bool = True):
        if len(dataset) == 0:
            raise DataError("the dataset to repeat over epochs is empty; check the data file and --split.")
        self.dataset = dataset
        self.num_samples = max(int(num_samples), len(dataset))
        self.seed, self.shuffle = int(seed), shuffle
        self._orders = {}

    def __len__(self) -> int:
        return self.num_samples

    def item_of(self, idx: int) -> int:
        """The index into the wrapped dataset of sample `idx`."""
        epoch, within = divmod(int(idx), len(self.dataset))
        if not self.shuffle:
            return within
        if epoch not in self._orders:
            self._orders[epoch] = np.random.RandomState((self.seed + epoch) % 2**32).permutation(len(self.dataset))
        return int(self._orders[epoch][within])

    def __getitem__(self, idx: int):
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for {len(self)} samples")
        return self.dataset[self.item_of(idx)]
