"""The target pipeline chunks of an offline reshard, derived from the source's maps alone.

Each target chunk is {local key: (whole model's key, spec)} plus its ShardingMap. With the
same pipeline size every chunk keeps its keys (only TP changes). Otherwise the chunks are
planned from the whole model's keys (`plan_chunks`), by the stage roles every family
shares (Megatron's split):

  - a stack's layers `<stack>.layers.<g>.*` (or `layers.<g>.*`) are cut evenly over the
    chunks that hold the stack (mpu.layout.stage_layer_range): every chunk for a single
    stack; encoder chunks [0, split) and decoder chunks [split, n) for an encoder-decoder
    (T5, two stacks, --pipeline-model-parallel-split-rank);
  - the input embedding `embedding.*` is owned by chunk 0; an encoder-decoder's first
    decoder chunk embeds too and holds copies of it;
  - a stack's own keys (`<stack>.final_layernorm.*`, Transformer-XL's `final_layernorm.*`)
    sit with its last layer;
  - a stack's relative-bias table `<stack>_relative_bias.*` (T5) and Transformer-XL's
    top-level r_w_bias / r_r_bias sit on every chunk of the stack, owned by its first;
  - the heads (everything else: output_layer, lm_head, pooler, binary_head) sit on the
    last chunk, which also holds a copy of the word table when the output is tied and
    the chunk does not embed (`word_embeddings.weight`; an encoder-decoder's
    `embedding.word_embeddings.weight`).

The plan is checked against the source: planned at the source's own chunks, it must give
every saved chunk's keys and copies exactly (a model that does not follow these roles is
refused with one sentence, pointing at resharding on load). Virtual pipeline chunks count
in model order (chunk j*P + r is virtual stage j of pipeline rank r), so a virtual
pipeline source re-cuts like any other; the target has no virtual stages.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ...errors import CheckpointError
from ...mpu.layout import stage_layer_range
from ...mpu.sharding_map import ShardingMap, ShardSpec
from ..contents import model_keys
from .source import SavedCheckpoint

WORD_TABLE_KEY = "embedding.word_embeddings.weight"


@dataclass
class TargetChunk:
    pipeline_rank: int
    chunk: str
    entries: Dict[str, Tuple[str, ShardSpec]]   # local key -> (whole model's key, spec)
    smap: ShardingMap


@dataclass
class PlannedChunk:
    entries: Dict[str, Tuple[str, ShardSpec]]   # local key -> (whole model's key, spec; copies carry copy_of)
    layer_offsets: Dict[str, int]


def _stacks(source: SavedCheckpoint) -> List[str]:
    prefixes = sorted({p for smap in source.maps.values() for p in smap.layer_offsets})
    # an encoder-decoder lists its encoder first (it takes the first stages)
    return sorted(prefixes, key=lambda p: (not p.startswith("encoder"), p))


def source_split_rank(source: SavedCheckpoint) -> Optional[int]:
    return (source.head.get("args") or {}).get("pipeline_model_parallel_split_rank")


def plan_chunks(owners: Dict[str, ShardSpec], stacks: List[str], num_chunks: int, split_rank: Optional[int],
                tied: bool, what: str) -> List[PlannedChunk]:
    """The keys of each of `num_chunks` model chunks (model order) of the whole model whose
    keys and specs are `owners` (module docstring)."""
    encoder_decoder = len(stacks) == 2
    if len(stacks) not in (1, 2):
        raise CheckpointError(f"{what} has layer stacks {stacks}; offline re-cuts know one stack or an "
                              f"encoder-decoder, --load it at the new sizes (resharding on load) and save.")
    if encoder_decoder and num_chunks > 1:
        if split_rank is None or not 0 < split_rank < num_chunks:
            raise CheckpointError(f"{what} is an encoder-decoder: cutting it into {num_chunks} pipeline stages "
                                  f"needs a split rank between 1 and {num_chunks - 1} "
                                  f"(--target-pipeline-model-parallel-split-rank), got {split_rank}.")
        spans = {stacks[0]: list(range(split_rank)), stacks[1]: list(range(split_rank, num_chunks))}
    else:
        spans = {stack: list(range(num_chunks)) for stack in stacks}
    chunks = [PlannedChunk({}, {}) for _ in range(num_chunks)]
    ranges: Dict[str, List[Tuple[int, int]]] = {}
    patterns = {stack: re.compile(rf"^{re.escape(stack)}\.(\d+)\.(.*)$") for stack in stacks}
    for stack, span in spans.items():
        layers = [int(m.group(1)) for m in map(patterns[stack].match, owners) if m]
        num_layers = 1 + max(layers)
        ranges[stack] = [stage_layer_range(num_layers, len(span), i) for i in range(len(span))]
        for i, c in enumerate(span):
            chunks[c].layer_offsets[stack] = ranges[stack][i][0]
    names = {stack: stack[:-len(".layers")] if stack.endswith(".layers") else "" for stack in stacks}
    decoder_first = spans[stacks[1]][0] if encoder_decoder else 0
    last = num_chunks - 1

    def place(chunk: int, local: str, name: str, spec: ShardSpec, copy: bool) -> None:
        chunks[chunk].entries[local] = (name, dataclasses.replace(spec, copy_of=name) if copy else spec)

    for name, spec in owners.items():
        stack = next((s for s in stacks if patterns[s].match(name)), None)
        if stack is not None:
            match = patterns[stack].match(name)
            g = int(match.group(1))
            i = next(i for i, (start, count) in enumerate(ranges[stack]) if start <= g < start + count)
            place(spans[stack][i], f"{stack}.{g - ranges[stack][i][0]}.{match.group(2)}", name, spec, False)
            continue
        if name.startswith("embedding."):
            place(0, name, name, spec, False)
            if encoder_decoder and decoder_first != 0:
                place(decoder_first, name, name, spec, True)
            continue
        bias_of = next((s for s in stacks if names[s] and name.startswith(f"{names[s]}_relative_bias.")), None)
        if bias_of is not None or ("." not in name and names[stacks[0]] == ""):
            span = spans[bias_of or stacks[0]]    # T5's per-stack tables, Transformer-XL's r_w_bias / r_r_bias
            for c in span:
                place(c, name, name, spec, c != span[0])
            continue
        own = next((s for s in stacks if (names[s] and name.startswith(names[s] + ".")) or
                    (not names[s] and name.startswith("final_layernorm."))), None)
        place(spans[own][-1] if own is not None else last, name, name, spec, False)
    embeds_last = last == 0 or (encoder_decoder and last == decoder_first)
    if tied and not embeds_last and WORD_TABLE_KEY in owners:
        local = WORD_TABLE_KEY if encoder_decoder else "word_embeddings.weight"
        place(last, local, WORD_TABLE_KEY, owners[WORD_TABLE_KEY], True)
    return chunks


def _source_chunks(source: SavedCheckpoint) -> List[Tuple[int, str]]:
    """The source's (pipeline rank, chunk key) in model order."""
    return [(r, chunk) for chunk in source.chunk_keys for r in range(source.pp)]


def _check_plan_matches_source(source: SavedCheckpoint, owners, stacks, tied) -> None:
    order = _source_chunks(source)
    planned = plan_chunks(owners, stacks, len(order), source_split_rank(source), tied, source.iteration_path)
    for (rank, chunk), plan in zip(order, planned):
        smap = source.maps[(rank, chunk)]
        saved = {k: (smap.global_key(k), spec.copy_of is not None) for k, spec in smap.tensors.items()}
        want = {k: (name, spec.copy_of is not None) for k, (name, spec) in plan.entries.items()}
        if saved != want or {p: o for p, o in smap.layer_offsets.items()} != plan.layer_offsets:
            differ = sorted(set(saved.items()) ^ set(want.items()))[:2]
            raise CheckpointError(f"the stages of {source.iteration_path} do not follow the stage roles offline "
                                  f"re-cuts know (pipeline rank {rank} {chunk}: {differ}); --load it at the new "
                                  f"sizes (resharding on load) and save instead.")


def _map(entries, tensor_size: int, source_map: ShardingMap, padded_vocab_size, offsets) -> ShardingMap:
    return ShardingMap({k: spec for k, (_, spec) in entries.items()}, tensor_size, padded_vocab_size,
                       source_map.vocab_size, dict(offsets))


def target_chunks(source: SavedCheckpoint, tensor_size: int, pipeline_size: int,
                  padded_vocab_size, split_rank: Optional[int] = None) -> List[TargetChunk]:
    """The target chunks; `split_rank`: an encoder-decoder's first decoder stage at the
    target (default: the source's when the pipeline size is kept)."""
    first_map = source.maps[(0, source.chunk_keys[0])]
    if pipeline_size == source.pp and split_rank in (None, source_split_rank(source)):
        chunks = []
        for (rank, chunk), smap in sorted(source.maps.items()):
            entries = {k: (smap.global_key(k), spec) for k, spec in smap.tensors.items()}
            chunks.append(TargetChunk(rank, chunk, entries, dataclasses.replace(
                smap, tensor_model_parallel_size=tensor_size, padded_vocab_size=padded_vocab_size)))
        return chunks
    owners = {name: owner.spec for name, owner in source.owners.items()}
    stacks = _stacks(source)
    tied = bool((source.head.get("model_config") or {}).get("share_embeddings_and_output_weights"))
    if len(_source_chunks(source)) > 1:
        _check_plan_matches_source(source, owners, stacks, tied)
    planned = plan_chunks(owners, stacks, pipeline_size, split_rank, tied, source.iteration_path)
    return [TargetChunk(r, "model", plan.entries, _map(plan.entries, tensor_size, first_map, padded_vocab_size,
                                                       plan.layer_offsets))
            for r, plan in enumerate(planned)]


__all__ = ["TargetChunk", "PlannedChunk", "plan_chunks", "target_chunks", "source_split_rank", "model_keys"]
