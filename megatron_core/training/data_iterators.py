"""Micro-batch iterators of this data-parallel rank over a map-style dataset.

    it = micro_batch_iterator(train_ds, consumed_samples, micro_batch_size, dp_rank, dp_size)
    next(it)   # {"text": LongTensor [micro_batch_size, seq_length + 1]}, one key per sample key

The samples come in Megatron's order (MegatronPretrainingSampler): each step of
micro_batch_size x DP indices is cut into one slice per data-parallel rank, so global
batch k holds the same samples whatever the DP size and micro-batch size, and a resumed
run starts at `consumed_samples`. Every sample is a dict of equal-shape numpy arrays;
they are stacked per key. `cyclic=True` starts over at the end (the validation stream).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional

import numpy as np
import torch

from ..data.samplers import MegatronPretrainingSampler


def _collate(samples) -> Dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])) for key in samples[0]}


def micro_batch_iterator(dataset, consumed_samples: int, micro_batch_size: int, data_parallel_rank: int,
                         data_parallel_size: int, cyclic: bool = False) -> Optional[Iterator[Dict[str, torch.Tensor]]]:
    if dataset is None or len(dataset) == 0:
        return None

    def batches():
        consumed = consumed_samples % len(dataset) if cyclic else consumed_samples
        while True:
            sampler = MegatronPretrainingSampler(len(dataset), consumed, micro_batch_size, data_parallel_rank,
                                                 data_parallel_size)
            for indices in sampler:
                yield _collate([dataset[i] for i in indices])
            if not cyclic:
                return
            consumed = 0
    return batches()
