"""A target rank's tensors, each read from a saved checkpoint by the whole model's key:
the weight, and its per-parameter optimizer state, as target tensor-parallel rank r of
T would hold them (split as the key's sharding spec says; a vocabulary-split tensor
re-padded to the target's padded vocabulary when that differs)."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...mpu.sharding_map import ShardSpec
from .lazy_files import FieldScratch
from .slices import read_shard
from .source import SavedCheckpoint


def _length(source: SavedCheckpoint, name: str, spec: ShardSpec, padded_vocab_size: Optional[int]) -> Optional[int]:
    saved = source.owner(name).spec
    return padded_vocab_size if saved.vocab and spec.vocab and padded_vocab_size else None


def target_weight(source: SavedCheckpoint, name: str, spec: ShardSpec, rank: int, size: int,
                  padded_vocab_size: Optional[int] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Whole-model key `name` as target TP rank `rank` of `size` holds it: a new tensor, or
    `out` filled (a writer's reused buffer); its pieces read from the source files by LazyFiles.copy."""
    saved = source.owner(name).spec
    return read_shard(saved, lambda s: source.weight(name, s), source.tp, rank,
                      size, _length(source, name, spec, padded_vocab_size), copy=source.files.copy, out=out)


def target_optimizer_field(source: SavedCheckpoint, name: str, spec: ShardSpec, field: str, rank: int, size: int,
                           padded_vocab_size: Optional[int] = None, out: Optional[torch.Tensor] = None,
                           scratch: Optional[FieldScratch] = None) -> torch.Tensor:
    """Element field `field` (exp_avg, fp32_master, ...) of `name`'s optimizer state as target
    TP rank `rank` of `size` holds it, split like the weight: a new tensor, or `out` filled;
    its pieces read from the source files as the weight's are (a field spread over several
    data-parallel shards is first gathered into `scratch`'s reused buffer)."""
    saved = source.owner(name).spec
    scratch = scratch or FieldScratch()
    return read_shard(saved, lambda s: source.optimizer_field(name, s, field, scratch), source.tp, rank, size,
                      _length(source, name, spec, padded_vocab_size), copy=source.files.copy, out=out)


def target_optimizer_state(source: SavedCheckpoint, name: str, spec: ShardSpec, rank: int, size: int,
                           padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """{field: value} of `name`'s optimizer state at target TP rank `rank` of `size`:
    element fields split like the weight (new tensors), scalar fields (step) as saved."""
    scratch = FieldScratch()
    source.optimizer_pieces(name, 0)     # a key without optimizer state is a CheckpointError here
    return {field: target_optimizer_field(source, name, spec, field, rank, size, padded_vocab_size, scratch=scratch)
            if isinstance(kind, torch.dtype) else kind for field, kind in source.optimizer_fields(name).items()}
