"""The arithmetic of a parallel layout, with no process groups: usable by tools that
reshard a checkpoint or check a launch without starting a world.

  ParallelLayout         which global ranks form the tensor / pipeline / data groups;
  PipelineStage          one model chunk's place in the pipeline, and what follows from it
                         (first / last stage, its layers, its stack of an encoder-decoder);
  stage_layer_range      Megatron's even split of the layers over (virtual) stages;
  pad_vocab_size         Megatron's vocabulary padding rule;
  shard_tensor / merge_shards   the rank-r shard of a tensor split along one dimension
                         with a stride, and its exact inverse. The tensor-parallel layers
                         initialize their weights with shard_tensor, so this is the one
                         definition of "rank r's part".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError


# --- ranks -----------------------------------------------------------------------------------
@dataclass
class ParallelLayout:
    """Megatron's rank order: tensor-parallel ranks adjacent, then data, then pipeline.

    With world 8, TP=2, PP=2: TP groups [0,1] [2,3] [4,5] [6,7], DP groups [0,2] [1,3]
    [4,6] [5,7], PP groups [0,4] [1,5] [2,6] [3,7].
    """
    world_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # Stage where an encoder-decoder model's decoder starts; its embedding joins the groups.
    pipeline_model_parallel_split_rank: Optional[int] = None

    def __post_init__(self):
        tp, pp, world = self.tensor_model_parallel_size, self.pipeline_model_parallel_size, self.world_size
        if tp < 1 or pp < 1:
            raise ConfigError(f"tensor ({tp}) and pipeline ({pp}) parallel sizes must be at least 1.")
        if world % (tp * pp) != 0:
            raise ConfigError(
                f"world size {world} is not divisible by tensor-parallel size {tp} x "
                f"pipeline-parallel size {pp} = {tp * pp}; launch a multiple of {tp * pp} "
                f"processes or change --tensor-model-parallel-size/--pipeline-model-parallel-size."
            )

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // (self.tensor_model_parallel_size * self.pipeline_model_parallel_size)

    def tensor_groups(self) -> List[List[int]]:
        tp = self.tensor_model_parallel_size
        return [list(range(start, start + tp)) for start in range(0, self.world_size, tp)]

    def pipeline_groups(self) -> List[List[int]]:
        num_pipelines = self.world_size // self.pipeline_model_parallel_size
        return [list(range(first, self.world_size, num_pipelines)) for first in range(num_pipelines)]

    def data_groups(self) -> List[List[int]]:
        tp = self.tensor_model_parallel_size
        ranks_per_stage = self.world_size // self.pipeline_model_parallel_size
        groups = []
        for stage in range(self.pipeline_model_parallel_size):
            start = stage * ranks_per_stage
            for offset in range(tp):
                groups.append(list(range(start + offset, start + ranks_per_stage, tp)))
        return groups

    def model_groups(self) -> List[List[int]]:
        """TP x PP groups: all ranks holding one full replica of the model."""
        dp_groups = self.data_groups()
        # The i-th member of every DP group belongs to model replica i.
        return [sorted(group[i] for group in dp_groups) for i in range(self.data_parallel_size)]

    def embedding_groups(self) -> List[List[int]]:
        """First and last stage of each pipeline: they share the tied word embedding."""
        groups = []
        for ranks in self.pipeline_groups():
            members = [ranks[0], ranks[-1]] if len(ranks) > 1 else list(ranks)
            split = self.pipeline_model_parallel_split_rank
            if split is not None and len(ranks) > 1 and ranks[split] not in members:
                members = [ranks[0], ranks[split], ranks[-1]]
            groups.append(members)
        return groups

    def position_embedding_groups(self) -> List[List[int]]:
        groups = []
        for ranks in self.pipeline_groups():
            members = [ranks[0]]
            split = self.pipeline_model_parallel_split_rank
            if split is not None and len(ranks) > 1 and ranks[split] not in members:
                members.append(ranks[split])
            groups.append(members)
        return groups


# --- pipeline stages ---------------------------------------------------------------------------
def stage_layer_range(num_layers: int, pipeline_size: int = 1, pipeline_rank: int = 0,
                      virtual_size: Optional[int] = None, virtual_rank: Optional[int] = None) -> Tuple[int, int]:
    """(layer_offset, num_layers) of the model chunk a (pipeline rank, virtual rank) owns.

    Megatron's even split. Without virtual stages rank r owns layers r*L/p .. (r+1)*L/p - 1.
    With v virtual stages the model is cut into p*v chunks of L/(p*v) layers, dealt out
    round-robin: chunk (virtual rank j, pipeline rank r) starts at j*L/v + r*L/(p*v). E.g.
    L=8, p=2, v=2: rank 0 holds layers [0,1] and [4,5], rank 1 holds [2,3] and [6,7].
    Offsets are global, 0-based (layer numbers inside the block are offset + 1 ...).
    """
    chunks = pipeline_size * (virtual_size or 1)
    if not 0 <= pipeline_rank < pipeline_size:
        raise ConfigError(f"pipeline rank {pipeline_rank} is outside a pipeline of {pipeline_size} stages.")
    if num_layers % chunks != 0:
        what = (f"pipeline_model_parallel_size ({pipeline_size}) x virtual_pipeline_model_parallel_size "
                f"({virtual_size})" if virtual_size else f"pipeline_model_parallel_size ({pipeline_size})")
        raise ConfigError(f"num_layers ({num_layers}) is not divisible by {what}; every stage needs the same "
                          f"number of layers.")
    per_chunk = num_layers // chunks
    if virtual_size:
        if virtual_rank is None or not 0 <= virtual_rank < virtual_size:
            raise ConfigError(f"virtual rank {virtual_rank} is outside {virtual_size} virtual stages.")
        return virtual_rank * (num_layers // virtual_size) + pipeline_rank * per_chunk, per_chunk
    return pipeline_rank * per_chunk, per_chunk


@dataclass(frozen=True)
class PipelineStage:
    """One model chunk's place in the pipeline: stage `rank` of `size`, and with interleaving
    virtual stage `virtual_rank` of `virtual_size`. `split_rank` is the first decoder stage
    of an encoder-decoder pipeline (stages below it hold the encoder).

    Models take this as an argument (the default is the whole model on one stage); what a
    chunk builds follows from it: `is_first` (it embeds the input), `is_last` (it holds the
    head) and `layer_range(num_layers)`.
    """
    rank: int = 0
    size: int = 1
    virtual_rank: Optional[int] = None
    virtual_size: Optional[int] = None
    split_rank: Optional[int] = None

    def __post_init__(self):
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ConfigError(f"pipeline stage {self.rank} is outside a pipeline of {self.size} stages.")
        if (self.virtual_rank is None) != (self.virtual_size is None):
            raise ConfigError(f"give virtual_rank and virtual_size together (got {self.virtual_rank} and "
                              f"{self.virtual_size}).")
        if self.virtual_size is not None and not 0 <= self.virtual_rank < self.virtual_size:
            raise ConfigError(f"virtual stage {self.virtual_rank} is outside {self.virtual_size} virtual stages.")
        if self.split_rank is not None:
            if not 0 < self.split_rank < self.size:
                raise ConfigError(f"split rank {self.split_rank} must leave encoder and decoder at least one of the "
                                  f"{self.size} stages each (0 < split_rank < pipeline size).")
            if self.virtual_size is not None:
                raise ConfigError("an encoder-decoder pipeline (split_rank) cannot use virtual stages; drop "
                                  "--virtual-pipeline-model-parallel-size.")

    @property
    def is_first(self) -> bool:
        """The chunk that embeds the input: first stage, first virtual stage (pre_process)."""
        return self.rank == 0 and (self.virtual_rank or 0) == 0

    @property
    def is_last(self) -> bool:
        """The chunk that computes the output: last stage, last virtual stage (post_process)."""
        last_virtual = self.virtual_size is None or self.virtual_rank == self.virtual_size - 1
        return self.rank == self.size - 1 and last_virtual

    def layer_range(self, num_layers: int) -> Tuple[int, int]:
        """(layer_offset, layer count) of this chunk, Megatron's even split."""
        return stage_layer_range(num_layers, self.size, self.rank, self.virtual_size, self.virtual_rank)

    def stack_stage(self, stack: str) -> Optional["PipelineStage"]:
        """This stage's place within one stack ("encoder" or "decoder") of an encoder-decoder
        pipeline: the encoder spans stages [0, split_rank), the decoder [split_rank, size).
        None when this stage holds none of that stack; without a split both stacks span
        the whole pipeline."""
        if stack not in ("encoder", "decoder"):
            raise ValueError(f"stack must be 'encoder' or 'decoder', got {stack!r}.")
        if self.split_rank is None:
            return self
        if stack == "encoder":
            return PipelineStage(self.rank, self.split_rank) if self.rank < self.split_rank else None
        if self.rank < self.split_rank:
            return None
        return PipelineStage(self.rank - self.split_rank, self.size - self.split_rank)


# --- vocabulary ----------------------------------------------------------------------------------
def pad_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int, tensor_model_parallel_size: int) -> int:
    """Megatron's padding rule: round up to a multiple of divisible_by * tp.

    Use this once, when a model is first created; the padded size is stored in the
    checkpoint so that resharding never changes it implicitly.
    """
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


# --- shards -----------------------------------------------------------------------------------------
def _chunk_size(length: int, size: int, stride: int) -> int:
    if size < 1 or stride < 1:
        raise ValueError(f"split size ({size}) and stride ({stride}) must be at least 1.")
    if length % (size * stride) != 0:
        raise ValueError(f"dimension {length} cannot be split into {size} ranks x stride {stride}; it must be "
                         f"a multiple of {size * stride}.")
    return length // (size * stride)


def shard_tensor(full: torch.Tensor, dim: int, rank: int, size: int, stride: int = 1) -> torch.Tensor:
    """Rank `rank`'s shard of `full` split `size` ways along `dim` with `stride`.

    The dimension is cut into size * stride equal chunks and rank r takes chunks
    r, r + size, r + 2*size, ... in order. Stride 1 is a contiguous split. A weight that
    fuses s equal pieces along `dim` (the GLU's [gate; up], s = 2) uses stride s, so every
    rank holds its rows of each piece: [gate_r; up_r]. Our fused QKV is laid out group by
    group (transformer/attention.py), so stride 1 already hands each rank whole groups.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside a split of size {size}.")
    chunk = _chunk_size(full.shape[dim], size, stride)
    chunks = torch.split(full, chunk, dim=dim)
    return torch.cat(chunks[rank::size], dim=dim)


def merge_shards(shards: Sequence[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """The full tensor whose shard_tensor(full, dim, r, len(shards), stride) is shards[r]."""
    if not shards:
        raise ValueError("merge_shards needs at least one shard.")
    shapes = {tuple(s.shape) for s in shards}
    if len(shapes) != 1:
        raise ValueError(f"shards to merge along dim {dim} must all have one shape, got {sorted(shapes)}.")
    pieces = [torch.split(s, _chunk_size(s.shape[dim], 1, stride), dim=dim) for s in shards]
    # Chunk c of the full tensor is piece c // size of rank c % size.
    return torch.cat([pieces[rank][piece] for piece in range(stride) for rank in range(len(shards))], dim=dim)
