"""The whole model of a saved checkpoint, merged one tensor at a time from its mapped shards.

    saved = open_saved_model("ckpt/")          # a --save directory, or one iteration's directory
    saved.model_config, saved.args, saved.vocab_size, saved.padded_vocab_size
    full = saved.state                          # a read-only Mapping: the TP=1, one-stage state dict
    table = full["embedding.word_embeddings.weight"]   # merged from every TP shard now, nothing kept

Either layout (Megatron's mp_rank_XX[_YYY]/model_optim_rng.pt, DeepSpeed's
mp_rank_XX_model_states.pt), with a tracker (latest_checkpointed_iteration.txt, latest) or
without one: a directory without a tracker is read as one iteration's directory when it holds
rank files, else its newest iteration directory is read.

Every rank file is opened with torch.load(mmap=True, weights_only=True): nothing is read until
a tensor is asked for, and then only that tensor's pages of each TP shard. A merged tensor is a
new tensor (cat or clone), so it never keeps a shard's storage alive. Which shard holds what,
and how it splits, comes from the sharding map each file carries (mpu/sharding_map.py); no
model is built and no process group is needed. Stage copies (a tied output table on the last
stage, ...) are skipped in favour of their original.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from ...errors import CheckpointError
from ...mpu.layout import merge_shards
from ...mpu.sharding_map import ShardingMap, ShardSpec
from .contents import model_keys
from .file_io import load_file
from .formats import LAYOUTS, detect_layout

_MEGATRON_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")
_DEEPSPEED_RANK_FILE = re.compile(r"^mp_rank_(\d{2})_model_states\.pt$")


def find_iteration_dir(directory: str) -> str:
    """The iteration directory a checkpoint path means (see the module docstring)."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist; pass the --save directory of a run.")
    found = detect_layout(directory, LAYOUTS["megatron"])
    if found is not None:
        layout, iteration = found
        path = layout.iteration_dir(directory, iteration)
        if not os.path.isdir(path):
            raise CheckpointError(f"the tracker of {directory} names {os.path.basename(path)}, which does not exist; "
                                  f"point the tracker at a complete checkpoint (a Chinese-Transformer-XL checkpoint "
                                  f"converts with tools/convert_checkpoint.py --from-ctxl).")
        return path
    if _rank_entries(directory):
        return directory
    candidates = []
    for layout in LAYOUTS.values():
        candidates += [layout.iteration_dir(directory, i) for i in layout.saved_iterations(directory)]
    candidates = [c for c in candidates if _rank_entries(c)]
    if not candidates:
        raise CheckpointError(f"{directory} holds no checkpoint (no tracker, no iter_*/global_step* directory and no "
                              f"mp_rank_* files); pass the --save directory of a run or one iteration's directory.")
    return max(candidates, key=lambda c: int(re.sub(r"\D", "", os.path.basename(c))))


def _rank_entries(path: str) -> Dict[int, str]:
    """{model-parallel position: file} of the rank files directly in `path` (Megatron: key
    (tp, pp) packed as pp * 1000 + tp; DeepSpeed: its mp rank)."""
    entries = {}
    for name in os.listdir(path) if os.path.isdir(path) else []:
        match = _MEGATRON_RANK_DIR.match(name)
        if match and os.path.isfile(os.path.join(path, name, "model_optim_rng.pt")):
            entries[int(match.group(2) or 0) * 1000 + int(match.group(1))] = os.path.join(path, name,
                                                                                          "model_optim_rng.pt")
        match = _DEEPSPEED_RANK_FILE.match(name)
        if match:
            entries[-1 - int(match.group(1))] = os.path.join(path, name)   # negative: DeepSpeed's numbering
    return entries


def rank_files(iteration_dir: str) -> Tuple[str, Dict[Tuple[int, int], str], dict]:
    """(layout name, {(tp rank, pp rank): file}, the first file's contents, mapped)."""
    entries = _rank_entries(iteration_dir)
    megatron = {k: v for k, v in entries.items() if k >= 0}
    deepspeed = {-1 - k: v for k, v in entries.items() if k < 0}
    if megatron:
        files = {(k % 1000, k // 1000): v for k, v in megatron.items()}
        name = "megatron"
    else:
        files, name = {}, "deepspeed"
    first_path = files[(0, 0)] if files else deepspeed.get(0)
    if first_path is None:
        raise CheckpointError(f"{iteration_dir} holds no rank-0 model file (mp_rank_00/model_optim_rng.pt or "
                              f"mp_rank_00_model_states.pt); the checkpoint is incomplete.")
    first = LAYOUTS[name].from_file(load_file(first_path, mmap=True))
    if name == "deepspeed":
        parallel = first.get("parallel")
        if not parallel:
            raise CheckpointError(f"{first_path} carries no 'parallel' record, so it was not written by this package "
                                  f"(a Chinese-Transformer-XL checkpoint? convert it with tools/convert_checkpoint.py "
                                  f"--from-ctxl).")
        tp = parallel["tensor_model_parallel_size"]
        files = {(mp % tp, mp // tp): path for mp, path in deepspeed.items()}
    return name, files, first


@dataclass
class _Source:
    """Where one tensor of the whole model lives: its stage's TP shard files and local key."""
    shards: List[Mapping[str, torch.Tensor]]
    key: str
    spec: ShardSpec


class MergedState(Mapping):
    """The whole model's state dict as a Mapping; each lookup merges that tensor's shards."""

    def __init__(self, sources: Dict[str, _Source]):
        self._sources = sources

    def __getitem__(self, key: str) -> torch.Tensor:
        source = self._sources[key]
        parts = [shard[source.key] for shard in source.shards]
        if source.spec.replicated or len(parts) == 1:
            return parts[0].clone()
        return merge_shards(parts, source.spec.split_dim, source.spec.stride)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def spec(self, key: str) -> ShardSpec:
        return self._sources[key].spec


@dataclass
class SavedModel:
    path: str                       # the iteration directory read
    layout: str                     # "megatron" or "deepspeed"
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    record: dict                    # the first rank file's entries (args, model_config, ...), weights left out
    state: MergedState = field(repr=False)

    @property
    def args(self) -> dict:
        return self.record.get("args") or {}

    @property
    def model_config(self) -> dict:
        config = self.record.get("model_config")
        if not config:
            raise CheckpointError(f"{self.path} carries no model_config; it was not written by this package's "
                                  f"training loop or converter.")
        return config

    @property
    def vocab_size(self) -> Optional[int]:
        return self.record.get("vocab_size")

    @property
    def padded_vocab_size(self) -> Optional[int]:
        return self.record.get("padded_vocab_size")


def open_saved_model(directory: str) -> SavedModel:
    iteration_dir = find_iteration_dir(directory)
    layout, files, first = rank_files(iteration_dir)
    tp = 1 + max(t for t, _ in files)
    pp = 1 + max(p for _, p in files)
    missing = [(t, p) for t in range(tp) for p in range(pp) if (t, p) not in files]
    if missing:
        raise CheckpointError(f"{iteration_dir} lacks the model file of tensor rank {missing[0][0]}, pipeline rank "
                              f"{missing[0][1]}; the checkpoint is incomplete, restore it.")
    sources: Dict[str, _Source] = {}
    for p in range(pp):
        states = [first if (t, p) == (0, 0) else LAYOUTS[layout].from_file(load_file(files[(t, p)], mmap=True))
                  for t in range(tp)]
        maps = states[0].get("sharding_map") or {}
        chunks = [k for k in model_keys(len(maps) or 1) if k in states[0]]
        if not maps or not chunks:
            raise CheckpointError(f"{files[(0, p)]} carries no sharding map; it was not written by this package "
                                  f"(convert foreign checkpoints with tools/convert_checkpoint.py).")
        for chunk in chunks:
            smap = ShardingMap.from_dict(maps[chunk])
            if smap.tensor_model_parallel_size != tp:
                raise CheckpointError(f"{files[(0, p)]} was saved for {smap.tensor_model_parallel_size} tensor-parallel "
                                      f"ranks but {iteration_dir} holds {tp}; the checkpoint mixes two runs.")
            shards = [state[chunk] for state in states]
            for key, spec in smap.tensors.items():
                if spec.copy_of is not None:
                    continue
                name = smap.global_key(key)
                if name in sources:
                    raise CheckpointError(f"two pipeline stages of {iteration_dir} both hold {name!r}; the checkpoint "
                                          f"mixes two runs.")
                sources[name] = _Source(shards, key, spec)
    record = {k: v for k, v in first.items() if not re.fullmatch(r"model\d*", k) and k != "optimizer"}
    return SavedModel(iteration_dir, layout, tp, pp, record, MergedState(sources))
