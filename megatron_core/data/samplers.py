"""Batch samplers that resume a run's sample stream exactly from its consumed-samples count.

A checkpoint stores how many samples the whole job has consumed (summed over data-parallel
ranks). Given that count, these samplers skip precisely those samples and yield, on each
data-parallel rank, the micro-batches that rank would have seen next, so a resumed run
reads the same data as an uninterrupted one. Each yields lists of dataset indices, one list
per micro-batch; wrap them in torch.utils.data.DataLoader(dataset, batch_sampler=...).
"""
from __future__ import annotations

from typing import Iterator, List

import numpy as np


def _check(total_samples: int, consumed_samples: int, micro_batch_size: int,
           data_parallel_rank: int, data_parallel_size: int) -> None:
    if total_samples <= 0:
        raise ValueError(f"the sampler got {total_samples} samples; the dataset is empty.")
    if micro_batch_size <= 0:
        raise ValueError(f"micro_batch_size is {micro_batch_size}; set --micro-batch-size to 1 or more.")
    if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
        raise ValueError(f"data-parallel rank {data_parallel_rank} is not in [0, {data_parallel_size}).")
    if consumed_samples < 0:
        raise ValueError(f"consumed_samples is {consumed_samples}; it cannot be negative.")


class MegatronPretrainingSampler:
    """Samples in order: each step takes the next micro_batch_size * dp indices and gives
    this rank its slice. Stops at total_samples (the last incomplete step is dropped
    unless drop_last=False, in which case each rank gets what is left of its slice)."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, drop_last: bool = True):
        _check(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
               data_parallel_size)
        if consumed_samples >= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} is not below the "
                             f"{total_samples} samples of the dataset; nothing is left to train on.")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        step = self.micro_batch_size * self.data_parallel_size
        first = self.data_parallel_rank * self.micro_batch_size
        for begin in range(self.consumed_samples, self.total_samples, step):
            end = min(begin + step, self.total_samples)
            if end - begin < step and self.drop_last:
                return
            mine = list(range(begin + first, min(begin + first + self.micro_batch_size, end)))
            if mine:
                yield mine


class MegatronPretrainingRandomSampler:
    """Epochs over the dataset, each in a random order fixed by (seed, epoch).

    An epoch uses the largest multiple of micro_batch_size * dp samples; the few left over
    are skipped that epoch. With data_sharding (Megatron's default) each rank draws from its
    own contiguous bucket of the dataset, which keeps a rank's reads local; without it all
    ranks share one permutation, taking every dp-th index. One pass of the iterator runs
    to the end of the current epoch and advances consumed_samples as it yields, so
    iterating again (as a cycling training loop does) continues with the next epoch.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, seed: int = 0,
                 data_sharding: bool = True):
        _check(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
               data_parallel_size)
        self.step = micro_batch_size * data_parallel_size
        if total_samples < self.step:
            raise ValueError(f"the dataset has {total_samples} samples, fewer than one step of "
                             f"micro_batch_size x data_parallel_size = {self.step}; use more data "
                             f"or a smaller batch.")
        self.samples_per_epoch = total_samples - total_samples % self.step
        if consumed_samples % self.step != 0:
            raise ValueError(f"consumed_samples {consumed_samples} is not a multiple of "
                             f"micro_batch_size x data_parallel_size = {self.step}; resume with "
                             f"the batch sizes of the run that saved the checkpoint.")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.seed = seed
        self.data_sharding = data_sharding

    def __len__(self) -> int:
        return self.total_samples

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's indices for the whole of `epoch`, in order."""
        rng = np.random.RandomState((self.seed + epoch) % 2**32)
        if self.data_sharding:
            bucket = self.samples_per_epoch // self.data_parallel_size
            return self.data_parallel_rank * bucket + rng.permutation(bucket)
        order = rng.permutation(self.samples_per_epoch)
        return order[self.data_parallel_rank::self.data_parallel_size]

    def __iter__(self) -> Iterator[List[int]]:
        epoch, done_in_epoch = divmod(self.consumed_samples, self.samples_per_epoch)
        # Every rank has taken done_in_epoch / dp of its own indices so far this epoch.
        mine = self._epoch_order(epoch)[done_in_epoch // self.data_parallel_size:]
        for begin in range(0, len(mine), self.micro_batch_size):
            self.consumed_samples += self.step
            yield mine[begin:begin + self.micro_batch_size].tolist()
