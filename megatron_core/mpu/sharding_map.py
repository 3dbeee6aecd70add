"""What part of each state-dict tensor a model chunk holds, as plain data: enough to
merge a checkpoint's tensor-parallel shards, split it for another TP size and put its
pipeline stages back together, without building the model or starting a world.

`model.sharding_map()` gives a ShardingMap: one ShardSpec per state-dict key,
  split_dim, stride   split over the TP ranks as layout.shard_tensor does; split_dim None:
                      replicated, every TP rank holds all of it;
  vocab               split_dim is the padded vocabulary (the map carries the padded and,
                      when known, the true vocabulary size);
  copy_of             this chunk holds a copy of the full model's tensor `copy_of` (the
                      tied output table on the last stage, T5's embedding on its first
                      decoder stage, a stack's relative-bias table on its later stages,
                      Transformer-XL's r_w_bias / r_r_bias after the stage with layer 1);
plus `layer_offsets`: {prefix: offset} says a chunk's key "<prefix>.<i>.<rest>" is
"<prefix>.<offset + i>.<rest>" of the full model (state-dict indices are 0-based and
local to the chunk; the layers' own layer_number is global and 1-based, offset + i + 1).

The map is read off the parameters, never off their names: the tensor-parallel layers
mark each parameter they split (partition_dim, partition_stride: init_methods), vocabulary
splits are marked by mark_vocab_parallel, stage copies by mark_stage_copy (below), and a
ModuleList whose children carry a global `layer_number` gives a layer offset. A new model
gets a correct map for free.

Stage copies. One parameter of the whole model may live on several pipeline stages (the
word table on the first stage and on a tied last stage, ...). Every stage's copy is
marked with mark_stage_copy(param, key, owner): `param.stage_copy` is the parameter's key
in the whole model's state dict, and the copies that do not own it are `shared`. The
same marks serve the pipeline (pipeline/finalize_grads.py sums the gradients of every
copy of a key over the stages that hold one), the gradient norm (which skips `shared`
parameters, so it counts each table once) and this map (a `shared` copy's copy_of is its
`stage_copy` key): one marking, three readers.

to_dict() / ShardingMap.from_dict() use only str, int, bool, None, lists and dicts, so
a checkpoint stores the map with torch.save and reads it with torch.load(weights_only=True).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .layout import merge_shards, shard_tensor

FORMAT_VERSION = 1

# The attribute naming the whole model's state-dict key a stage's parameter is a copy of.
STAGE_COPY_ATTRIBUTE = "stage_copy"


def mark_stage_copy(param: nn.Parameter, key: str, owner: bool = True) -> nn.Parameter:
    """Mark `param` as this stage's copy of the whole model's parameter `key` (its state-dict
    key). Exactly one copy of a key in a pipeline is the owner; the others are `shared`:
    not counted in gradient norms, and saved with copy_of=key in the sharding map."""
    setattr(param, STAGE_COPY_ATTRIBUTE, key)
    if not owner:
        param.shared = True
    return param


@dataclass(frozen=True)
class ShardSpec:
    split_dim: Optional[int] = None   # None: replicated over the tensor-parallel ranks
    stride: int = 1
    vocab: bool = False               # split_dim is the padded vocabulary
    copy_of: Optional[str] = None     # a copy of this key of the full model

    @property
    def replicated(self) -> bool:
        return self.split_dim is None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "ShardSpec":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CheckpointError(f"sharding map entry has unknown fields {sorted(unknown)}; it was written by a "
                                  f"newer version, upgrade megatron_core to read it.")
        return cls(**values)


@dataclass(frozen=True)
class ShardingMap:
    tensors: Dict[str, ShardSpec]
    tensor_model_parallel_size: int = 1
    padded_vocab_size: Optional[int] = None
    vocab_size: Optional[int] = None          # the tokenizer's, when the caller knows it
    layer_offsets: Dict[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> ShardSpec:
        return self.tensors[key]

    def global_key(self, key: str) -> str:
        """The key of this tensor in the whole model (one stage, TP shards merged): a copy
        names its original; a layer key gets its global index."""
        spec = self.tensors[key]
        if spec.copy_of is not None:
            return spec.copy_of
        for prefix, offset in self.layer_offsets.items():
            match = re.match(rf"{re.escape(prefix)}\.(\d+)\.", key)
            if match:
                return f"{prefix}.{int(match.group(1)) + offset}.{key[match.end():]}"
        return key

    def to_dict(self) -> dict:
        return {"version": FORMAT_VERSION, "tensor_model_parallel_size": self.tensor_model_parallel_size,
                "padded_vocab_size": self.padded_vocab_size, "vocab_size": self.vocab_size,
                "layer_offsets": dict(self.layer_offsets),
                "tensors": {key: spec.to_dict() for key, spec in self.tensors.items()}}

    @classmethod
    def from_dict(cls, values: Mapping) -> "ShardingMap":
        version = values.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"sharding map version {version!r} is not one this megatron_core reads "
                                  f"({FORMAT_VERSION}); upgrade megatron_core or re-save the checkpoint.")
        return cls(tensors={key: ShardSpec.from_dict(spec) for key, spec in values["tensors"].items()},
                   tensor_model_parallel_size=values["tensor_model_parallel_size"],
                   padded_vocab_size=values["padded_vocab_size"], vocab_size=values["vocab_size"],
                   layer_offsets=dict(values["layer_offsets"]))


# --- reading a map off a model ------------------------------------------------------------------
def _layer_offsets(module: nn.Module) -> Dict[str, int]:
    offsets = {}
    for name, child in module.named_modules():
        if not isinstance(child, nn.ModuleList) or len(child) == 0:
            continue
        numbers = [getattr(layer, "layer_number", None) for layer in child]
        if not all(isinstance(n, int) for n in numbers):
            continue
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise ValueError(f"{name} holds layers {numbers}; a chunk must hold consecutive layers.")
        offsets[name] = numbers[0] - 1
    return offsets


def sharding_map_of(module: nn.Module, tensor_model_parallel_size: int, padded_vocab_size: Optional[int] = None,
                    vocab_size: Optional[int] = None) -> ShardingMap:
    """The map of `module.state_dict()`. A `shared` parameter is a stage copy: its copy_of
    is the whole model's key it was marked with (mark_stage_copy), e.g. GPT's last-stage
    "word_embeddings.weight" is a copy of "embedding.word_embeddings.weight"."""
    specs = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        split = getattr(tensor, "partition_dim", None) if getattr(tensor, "tensor_model_parallel", False) else None
        copy_of = None
        if getattr(tensor, "shared", False):
            copy_of = getattr(tensor, STAGE_COPY_ATTRIBUTE, None)
            if copy_of is None:
                raise ValueError(f"{type(module).__name__}.{key} is marked shared but names no original; mark "
                                 f"it with mark_stage_copy(param, <its key in the whole model>, owner=False).")
        specs[key] = ShardSpec(split_dim=split, stride=getattr(tensor, "partition_stride", 1) if split is not None else 1,
                               vocab=bool(getattr(tensor, "vocab_parallel", False)), copy_of=copy_of)
    return ShardingMap(specs, tensor_model_parallel_size, padded_vocab_size, vocab_size, _layer_offsets(module))


# --- tensor parallelism -------------------------------------------------------------------------------
def _check_keys(state: Mapping[str, torch.Tensor], smap: ShardingMap, what: str) -> None:
    missing, extra = set(smap.tensors) - set(state), set(state) - set(smap.tensors)
    if missing or extra:
        raise CheckpointError(f"{what} does not match its sharding map: missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(extra)[:3]}; pass the state dict saved with that map.")


def merge_tensor_parallel(shards: Sequence[Mapping[str, torch.Tensor]], smap: ShardingMap) -> Dict[str, torch.Tensor]:
    """One chunk's full state dict from its TP ranks' state dicts (rank order). Replicated
    tensors are taken from rank 0."""
    if len(shards) != smap.tensor_model_parallel_size:
        raise CheckpointError(f"the sharding map describes {smap.tensor_model_parallel_size} tensor-parallel shards "
                              f"but {len(shards)} were given; pass every mp_rank file of this stage.")
    for rank, state in enumerate(shards):
        _check_keys(state, smap, f"tensor-parallel shard {rank}")
    merged = {}
    for key, spec in smap.tensors.items():
        if spec.replicated:
            merged[key] = shards[0][key]
        else:
            merged[key] = merge_shards([state[key] for state in shards], spec.split_dim, spec.stride)
    return merged


def split_tensor_parallel(full: Mapping[str, torch.Tensor], smap: ShardingMap, size: int
                          ) -> List[Dict[str, torch.Tensor]]:
    """The state dicts of `size` TP ranks from one chunk's full state dict (the map's split
    dimensions hold for any TP size; its tensor_model_parallel_size is not used). Replicated
    tensors are the same object in every shard."""
    _check_keys(full, smap, "the full state dict")
    if smap.padded_vocab_size is not None and smap.padded_vocab_size % size != 0:
        raise ConfigError(f"the padded vocabulary ({smap.padded_vocab_size}) does not split over {size} "
                          f"tensor-parallel ranks; re-pad it to a multiple of {size} first.")
    shards = [{} for _ in range(size)]
    for key, spec in smap.tensors.items():
        for rank in range(size):
            shards[rank][key] = full[key] if spec.replicated else \
                shard_tensor(full[key], spec.split_dim, rank, size, spec.stride).clone()
    return shards


# --- pipeline parallelism -------------------------------------------------------------------------------
def merge_pipeline_stages(stages: Sequence[Tuple[Mapping[str, torch.Tensor], ShardingMap]]
                          ) -> Tuple[Dict[str, torch.Tensor], ShardingMap]:
    """The whole model's state dict and map from every chunk's (state dict, map), any order:
    layer keys take their global index, copies are dropped in favour of their original."""
    if not stages:
        raise CheckpointError("merge_pipeline_stages needs at least one stage.")
    first = stages[0][1]
    merged, specs, copies = {}, {}, {}
    for index, (state, smap) in enumerate(stages):
        _check_keys(state, smap, f"pipeline chunk {index}")
        if (smap.tensor_model_parallel_size, smap.padded_vocab_size) != \
                (first.tensor_model_parallel_size, first.padded_vocab_size):
            raise CheckpointError(f"pipeline chunk {index} has TP size {smap.tensor_model_parallel_size} and padded "
                                  f"vocabulary {smap.padded_vocab_size}, chunk 0 has {first.tensor_model_parallel_size}"
                                  f" and {first.padded_vocab_size}; merge chunks of one checkpoint only.")
        for key, value in state.items():
            name = smap.global_key(key)
            if smap[key].copy_of is not None:
                copies[name] = value
                continue
            if name in merged:
                raise CheckpointError(f"two pipeline chunks both hold {name!r}; merge chunks of one checkpoint, "
                                      f"each once.")
            merged[name], specs[name] = value, smap[key]
    for name, value in copies.items():
        if name not in merged or merged[name].shape != value.shape:
            raise CheckpointError(f"a chunk holds a copy of {name!r} but no chunk holds the original (with shape "
                                  f"{tuple(value.shape)}); pass every pipeline stage.")
    offsets = {prefix: 0 for _, smap in stages for prefix in smap.layer_offsets}
    return merged, dataclasses.replace(first, tensors=specs, layer_offsets=offsets)
