"""The target pipeline chunks of an offline reshard, derived from the source's maps alone.

Each target chunk is {local key: (whole model's key, spec)} plus its ShardingMap:
  - the same pipeline size: every chunk keeps its keys (only TP changes);
  - one stage: the whole model (copies dropped: merge_pipeline_stages' rule);
  - another pipeline size: layer `<prefix>.<g>.*` goes to the stage whose range
    (mpu.layout.stage_layer_range, Megatron's even split) holds g; a key outside the
    layers stays with the end of the pipeline it was on (first or last stage); a copy
    that sat on the last stage goes to the new last stage, one that sat on every stage
    after the first (Transformer-XL's r_w_bias) to every stage after the first.
An encoder-decoder (T5, two stacks over a split rank) and a PP=1 source give no stage
roles to follow; those go to one stage or keep their pipeline size here, and load at any
size with --load (resharding on load builds the target chunks from the model).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ....errors import CheckpointError
from ....mpu.layout import stage_layer_range
from ....mpu.sharding_map import ShardingMap, ShardSpec
from ..contents import model_keys
from .source import SavedCheckpoint


@dataclass
class TargetChunk:
    pipeline_rank: int
    chunk: str
    entries: Dict[str, Tuple[str, ShardSpec]]   # local key -> (whole model's key, spec)
    smap: ShardingMap


def _map(entries, tensor_size: int, source_map: ShardingMap, padded_vocab_size, offsets) -> ShardingMap:
    return ShardingMap({k: spec for k, (_, spec) in entries.items()}, tensor_size, padded_vocab_size,
                       source_map.vocab_size, dict(offsets))


def target_chunks(source: SavedCheckpoint, tensor_size: int, pipeline_size: int,
                  padded_vocab_size) -> List[TargetChunk]:
    first_map = source.maps[(0, source.chunk_keys[0])]
    if pipeline_size == source.pp:
        chunks = []
        for (rank, chunk), smap in sorted(source.maps.items()):
            entries = {k: (smap.global_key(k), spec) for k, spec in smap.tensors.items()}
            chunks.append(TargetChunk(rank, chunk, entries, dataclasses.replace(
                smap, tensor_model_parallel_size=tensor_size, padded_vocab_size=padded_vocab_size)))
        return chunks
    prefixes = sorted({p for smap in source.maps.values() for p in smap.layer_offsets})
    if pipeline_size == 1:
        entries = {name: (name, owner.spec) for name, owner in source.owners.items()}
        return [TargetChunk(0, "model", entries, _map(entries, tensor_size, first_map, padded_vocab_size,
                                                     {p: 0 for p in prefixes}))]
    if source.pp == 1 or len(prefixes) != 1 or source.head.get("args", {}).get("pipeline_model_parallel_split_rank"):
        raise CheckpointError(f"{source.iteration_path} ({'one stage' if source.pp == 1 else 'an encoder-decoder'}) "
                              f"cannot be cut into {pipeline_size} pipeline stages offline; reshard it to "
                              f"--target-pipeline-parallel-size 1 or {source.pp}, or --load it at the new sizes "
                              f"(resharding on load) and save.")
    prefix = prefixes[0]
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    num_layers = 1 + max(int(m.group(1)) for m in map(pattern.match, source.owners) if m)
    stages = [{} for _ in range(pipeline_size)]
    ranges = [stage_layer_range(num_layers, pipeline_size, r) for r in range(pipeline_size)]
    last = source.pp - 1
    for name, owner in source.owners.items():
        match = pattern.match(name)
        if match:
            g = int(match.group(1))
            rank = next(r for r, (start, count) in enumerate(ranges) if start <= g < start + count)
            stages[rank][f"{prefix}.{g - ranges[rank][0]}.{match.group(2)}"] = (name, owner.spec)
        elif owner.pipeline_rank in (0, last):
            stages[0 if owner.pipeline_rank == 0 else pipeline_size - 1][owner.key] = (name, owner.spec)
        else:
            raise CheckpointError(f"{name} sits on middle stage {owner.pipeline_rank} outside the layers; this "
                                  f"model's stages cannot be re-cut offline, --load it at the new sizes instead.")
    copies: Dict[Tuple[str, str], set] = {}
    for (rank, _), smap in source.maps.items():
        for key, spec in smap.tensors.items():
            if spec.copy_of is not None:
                copies.setdefault((key, spec.copy_of), set()).add(rank)
    for (key, original), ranks in copies.items():
        owner = source.owner(original)
        spec = dataclasses.replace(owner.spec, copy_of=original)
        # Transformer-XL's shared relative biases sit on every stage with layers after the
        # first (model config); the tied output table only on the last.
        every_stage = (source.head.get("model_config") or {}).get("position_embedding_type") == "relative_xl" \
            and not owner.spec.vocab
        targets = range(1, pipeline_size) if every_stage and ranks == set(range(1, source.pp)) else \
            [pipeline_size - 1] if ranks == {last} else None
        if targets is None:
            raise CheckpointError(f"the copies of {original} sit on stages {sorted(ranks)}; they cannot be placed on "
                                  f"{pipeline_size} stages offline, --load it at the new sizes instead.")
        for rank in targets:
            stages[rank][key] = (original, spec)
    return [TargetChunk(r, "model", entries, _map(entries, tensor_size, first_map, padded_vocab_size,
                                                  {prefix: ranges[r][0]}))
            for r, entries in enumerate(stages)]


__all__ = ["TargetChunk", "target_chunks", "model_keys"]
