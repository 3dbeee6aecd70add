"""Micro-batch iterators per data-parallel rank, resumable from the consumed-samples count.

    iterators = build_data_iterators((train, valid, test), micro_batch_size=4,
                                     consumed_train_samples=resumed_count, every_stage=False)
    forward_backward(..., data_iterator=iterators.train, ...)     # next() is one micro-batch

Sample order is Megatron's pretraining sampler ("single"): the job reads samples 0, 1, 2, ...
in steps of micro_batch_size x DP; in each step DP rank r takes the r-th micro-batch-sized
slice. A training iteration pulls `num_microbatches` micro-batches on every rank, so global
batch k holds exactly the samples [c_k, c_k + G_k), c_k the samples consumed before it
(k * G without ramp-up), whatever the data-parallel and micro-batch sizes; a batch size that
ramps up only changes how many micro-batches the loop pulls (BatchSchedule.num_microbatches_at).
Resuming from consumed samples c continues at sample c. "cyclic" uses the shuffled
epochs of MegatronPretrainingRandomSampler instead (each DP rank its own bucket).

Who reads: only the first rank of each tensor-parallel group reads the data; its peers get
a `ReceiveFromTensorParallelSource` in place of the iterator and take the batch from
`mpu.broadcast_data` inside get_batch_* (batches.py). Only the model chunks that need the
batch get an iterator, None elsewhere: the first chunk (tokens) and the last (labels), or
every chunk with `every_stage` (models whose middle stages need masks: BERT, RoFormer,
T5, GPT with --reset-attention-mask). With virtual pipeline stages each field is a list,
one iterator per model chunk, as the interleaved schedule takes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import torch

from ..errors import DataError
from ..data.samplers import MegatronPretrainingRandomSampler, MegatronPretrainingSampler


class ReceiveFromTensorParallelSource:
    """Stands in for the data iterator on a tensor-parallel rank that does not read data:
    next() gives None, and get_batch_* receives the batch from the group's first rank."""

    def __iter__(self):
        return self

    def __next__(self):
        return None


@dataclass(frozen=True)
class DataParallelPosition:
    """Where this process sits, as far as reading data is concerned."""
    data_parallel_rank: int = 0
    data_parallel_size: int = 1
    tensor_parallel_rank: int = 0
    pipeline_rank: int = 0
    pipeline_size: int = 1
    num_chunks: Optional[int] = None   # virtual pipeline stages; None without interleaving

    @classmethod
    def from_parallel_state(cls) -> "DataParallelPosition":
        from ..mpu import parallel_state as ps
        if not ps.model_parallel_is_initialized():
            return cls()
        return cls(ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(),
                   ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                   ps.get_pipeline_model_parallel_world_size(), ps.get_virtual_pipeline_model_parallel_world_size())

    def chunk_reads_data(self, chunk: int, every_stage: bool) -> bool:
        """Whether model chunk `chunk` of this process takes a batch."""
        chunks = self.num_chunks or 1
        first = self.pipeline_rank == 0 and chunk == 0
        last = self.pipeline_rank == self.pipeline_size - 1 and chunk == chunks - 1
        return every_stage or first or last


def pretraining_sampler(num_samples: int, consumed_samples: int, micro_batch_size: int,
                        data_parallel_rank: int, data_parallel_size: int, dataloader_type: str = "single",
                        seed: int = 1234):
    """The batch sampler of one DP rank: lists of dataset indices, one per micro-batch."""
    if consumed_samples >= num_samples and dataloader_type == "single":
        raise DataError(f"the dataset has {num_samples} samples and {consumed_samples} are already consumed; "
                        f"nothing is left to read (train longer only with more data or a larger --split share).")
    if dataloader_type == "single":
        return MegatronPretrainingSampler(num_samples, consumed_samples, micro_batch_size,
                                          data_parallel_rank, data_parallel_size)
    if dataloader_type == "cyclic":
        return MegatronPretrainingRandomSampler(num_samples, consumed_samples, micro_batch_size,
                                                data_parallel_rank, data_parallel_size, seed=seed)
    raise DataError(f"--dataloader-type {dataloader_type} is unknown; use single or cyclic.")


def _epochs(loader) -> Iterator:
    # The cyclic sampler ends each pass at its epoch's end and goes on from there next time.
    while True:
        yield from loader


def micro_batch_iterator(dataset, consumed_samples: int, micro_batch_size: int, data_parallel_rank: int,
                         data_parallel_size: int, dataloader_type: str = "single", num_workers: int = 0,
                         seed: int = 1234) -> Iterator[dict]:
    """This DP rank's micro-batches of `dataset` (dicts of stacked tensors), from `consumed_samples` on."""
    sampler = pretraining_sampler(len(dataset), consumed_samples, micro_batch_size, data_parallel_rank,
                                  data_parallel_size, dataloader_type, seed)
    # Each pass over a DataLoader draws its workers' base seed from `generator`; a private one
    # keeps that draw off the global stream that dropout uses, so building the iterators after
    # a checkpoint's RNG states are restored does not shift them (exact resume).
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                         pin_memory=torch.cuda.is_available(),
                                         persistent_workers=num_workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    return _epochs(loader) if dataloader_type == "cyclic" else iter(loader)


@dataclass
class DataIterators:
    """Per split: None (no data, or this process reads none), an iterator, or one per model chunk."""
    train: Any = None
    valid: Any = None
    test: Any = None


def build_data_iterators(datasets: Sequence, micro_batch_size: int, consumed_train_samples: int = 0,
                         consumed_valid_samples: int = 0, *, every_stage: bool = False,
                         dataloader_type: str = "single", num_workers: int = 0, seed: int = 1234,
                         position: Optional[DataParallelPosition] = None) -> DataIterators:
    """Iterators over (train, valid, test) for this process; see the module docstring.

    Valid and test are always read in order ("single"); valid resumes at
    `consumed_valid_samples`, test starts at 0.
    """
    position = position or DataParallelPosition.from_parallel_state()
    train, valid, test = (list(datasets) + [None, None, None])[:3]
    splits = ((train, consumed_train_samples, dataloader_type), (valid, consumed_valid_samples, "single"),
              (test, 0, "single"))
    built: List[Any] = []
    for dataset, consumed, kind in splits:
        per_chunk = []
        for chunk in range(position.num_chunks or 1):
            if dataset is None or not position.chunk_reads_data(chunk, every_stage):
                per_chunk.append(None)
            elif position.tensor_parallel_rank != 0:
                per_chunk.append(ReceiveFromTensorParallelSource())
            else:
                per_chunk.append(micro_batch_iterator(
                    dataset, consumed, micro_batch_size, position.data_parallel_rank,
                    position.data_parallel_size, kind, num_workers, seed))
        built.append(per_chunk if position.num_chunks else per_chunk[0])
    return DataIterators(*built)

