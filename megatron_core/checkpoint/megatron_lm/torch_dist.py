"""Megatron-LM's `--ckpt-format torch_dist` checkpoints, read and written with torch's own
torch.distributed.checkpoint (DCP); megatron is never imported.

    ckpt = read_torch_dist("save/iter_0000010")       # or "save/" (its tracker picks the iteration)
    ckpt.common["args"].num_layers; ckpt.tensors["decoder.layers.1.mlp.linear_fc1.weight"]
    write_torch_dist("out/iter_0000010", state, {"args": args, "iteration": 10})   # one process
    write_torch_dist_shards("out/iter_0000010", my_shards, common)   # every rank, collectively
                                                          # (the training loop's --ckpt-format torch_dist)

torch_dist
----------
The files, as megatron-core 0.16.1 (megatron.core.dist_checkpointing, strategy torch_dist
version 1) writes them:

    <save>/latest_checkpointed_iteration.txt   "10": the iteration, written last
    <save>/iter_0000010/.metadata              DCP's pickled Metadata: every tensor's global
                                               size, dtype and chunks, and where each chunk lies
    <save>/iter_0000010/__<rank>_<i>.distcp    the chunks each rank wrote (one file per writer
                                               thread, two by default), each a torch.save'd tensor
    <save>/iter_0000010/common.pt              torch.save of everything that is not a tensor
    <save>/iter_0000010/metadata.json          {"sharded_backend": "torch_dist",
                                               "sharded_backend_version": 1, "common_backend":
                                               "torch", "common_backend_version": 1}, written last

Tensors are named by megatron-core's sharded keys, not the state-dict keys: a layer's tensors
are stacked on a leading layer axis numbered across pipeline stages, and the norms carry
Transformer Engine's names (torch_dist_keys.py has the table). Tensor-parallel shards are
chunks of the full tensor, so a checkpoint saved at TP=2 holds the same global tensors as one
saved at TP=1. SwiGLU's fc1 ([gate; up] on every rank) is stored as the TP=1 tensor [gate;
up]: rank r's gate half is chunk r and its up half chunk tp + r of 2*tp along dim 0 (with
`singleton_local_shards` the halves become two tensors, `..._w` and `..._v`; read here too).
Each linear module's `_extra_state` (None for local layers, Transformer Engine's fp8 state
otherwise) is a pickled object, `<name>._extra_state/shard_<layer>_<num_layers>`; the RNG
states are pickled `rng_state/...` objects.

The optimizer (megatron-core's plain Adam, fp32 or mixed precision) stores each per-parameter
field as a tensor of the parameter's global shape and layer stacking, under the parameter's
checkpoint name behind `optimizer.state.<field>.`:

    optimizer.state.exp_avg.decoder.layers.mlp.linear_fc2.weight      [num_layers, 64, 256]
    optimizer.state.exp_avg_sq.decoder.layers.mlp.linear_fc2.weight   [num_layers, 64, 256]
    optimizer.state.fp32_param.decoder.layers.mlp.linear_fc2.weight   the fp32 master (bf16/fp16)

and keeps Adam's step once in common.pt: `optimizer = {"state": {"common_step": tensor},
"param_groups": [...]}` (a mixed-precision optimizer nests that dict under "optimizer"). Read
here as `optimizer_tensors[field]`, keyed like `tensors`.

common.pt holds Megatron-LM's `args` (an argparse.Namespace; some flags hold megatron enums,
see pickled_args.py), `checkpoint_version` (3.0), `iteration`, `opt_param_scheduler`,
`num_floating_point_operations_so_far`, `content_metadata` (how the state dict was sharded:
`singleton_local_shards`, the distributed optimizer's sharding type) and, when a step must be
rerun, `rerun_state_machine`. It is read with weights_only=True and pickled_args.ARGS_ALLOWLIST:
any other class is refused with the file and the class named, and no code from it runs.

Reading never unpickles the `_extra_state`, RNG or optimizer objects (DCP would unpickle them
with weights_only=False); tensors are read one key at a time into a tensor allocated for it.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, MetadataIndex,
                                                   TensorProperties)
from torch.distributed.checkpoint.planner import (LoadPlan, SavePlan, TensorWriteData, WriteItem,
                                                  WriteItemType)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from ...atomic_files import write_atomically
from ...errors import CheckpointError
from ..file_io import load_file, save_file, write_bytes_atomically
from . import torch_dist_keys as keys
from .pickled_args import ARGS_ALLOWLIST

TRACKER = "latest_checkpointed_iteration.txt"
BACKEND_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                    "common_backend": "torch", "common_backend_version": 1}
CHECKPOINT_VERSION = 3.0
OPTIMIZER_STATE = "optimizer.state."      # + field + "." + a model tensor's checkpoint name


# ----------------------------------------------------------------------------- reading

@dataclass
class TorchDistCheckpoint:
    directory: str
    common: dict
    tensors: "LazyTensors"
    extra_states_skipped: int       # `_extra_state` objects left unread
    optimizer_tensors: Dict[str, "LazyTensors"]     # {field as saved (exp_avg, ...): its tensors by our keys}


def read_torch_dist(path: str, allow: Sequence = ARGS_ALLOWLIST) -> TorchDistCheckpoint:
    """The checkpoint in iteration directory `path` (or the one `path/latest_checkpointed_
    iteration.txt` names). `allow`: the classes common.pt may rebuild (see pickled_args.py)."""
    directory = _iteration_directory(path)
    backend = _backend_metadata(directory)
    if backend.get("sharded_backend") != "torch_dist":
        raise CheckpointError(f"{directory} holds a {backend.get('sharded_backend')!r} checkpoint, not torch_dist; "
                              f"read it with the reader for that format.")
    reader = _MetadataOnce(directory)
    metadata = reader.read_metadata()
    missing = sorted({info.relative_path for info in metadata.storage_data.values()}
                     - set(os.listdir(directory)))
    if missing:
        raise CheckpointError(f"{directory} is incomplete: its .metadata lists {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} missing; copy the whole checkpoint "
                              f"directory again.")
    common = load_file(os.path.join(directory, "common.pt"), allow=list(allow))
    tensors = LazyTensors(directory, reader)
    fields = sorted({name[len(OPTIMIZER_STATE):].split(".", 1)[0] for name in metadata.state_dict_metadata
                     if name.startswith(OPTIMIZER_STATE)})
    optimizer = {field: LazyTensors(directory, reader, f"{OPTIMIZER_STATE}{field}.") for field in fields}
    return TorchDistCheckpoint(directory, common, tensors, tensors.extra_states_skipped, optimizer)


def _iteration_directory(path: str) -> str:
    tracker = os.path.join(path, TRACKER)
    if os.path.isfile(tracker):
        with open(tracker) as f:
            text = f.read().strip()
        return os.path.join(path, "release" if text == "release" else f"iter_{int(text):07d}")
    return path


def _backend_metadata(directory: str) -> dict:
    path = os.path.join(directory, "metadata.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist: {directory} is not a finished torch_dist checkpoint "
                              f"(metadata.json is written last); give an iter_NNNNNNN directory whose save "
                              f"completed.")
    with open(path) as f:
        return json.load(f)


class _MetadataOnce(dcp.FileSystemReader):
    """A FileSystemReader that unpickles `.metadata` once, not once per tensor read."""

    def __init__(self, path: str):
        super().__init__(path)
        self._metadata = None

    def read_metadata(self, *args, **kwargs):
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


@dataclass(frozen=True)
class _Source:
    parts: Tuple[Tuple[str, Optional[int]], ...]    # (checkpoint tensor, layer row or None), concatenated on dim 0
    shape: torch.Size
    dtype: torch.dtype


class LazyTensors(Mapping):
    """{megatron-core state-dict key at TP=1: full tensor}, each read from disk when asked for.
    prefix "": the model's tensors; "optimizer.state.exp_avg.": that optimizer field's tensors,
    keyed by their parameters' state-dict keys."""

    def __init__(self, directory: str, reader: _MetadataOnce, prefix: str = ""):
        self.directory, self._reader = directory, reader
        self._sources: Dict[str, _Source] = {}
        self.extra_states_skipped = 0
        stored = reader.read_metadata().state_dict_metadata
        for name, md in stored.items():
            if isinstance(md, BytesStorageMetadata):
                self.extra_states_skipped += not prefix and name.split("/")[0].endswith("_extra_state")
                continue
            if not name.startswith(prefix) or (not prefix and name.startswith("optimizer.")) \
                    or (name.endswith("_v") and name[:-2] + "_w" in stored):
                continue
            halves = name.endswith("_w") and name[:-2] + "_v" in stored     # singleton_local_shards SwiGLU
            names = (name, name[:-2] + "_v") if halves else (name,)
            base = name[len(prefix):-2] if halves else name[len(prefix):]
            rows = sum(stored[n].size[1 if keys.is_stacked(n[len(prefix):]) else 0] for n in names) if halves else None
            for layer in (range(md.size[0]) if keys.is_stacked(base) else (None,)):
                shape = md.size[1:] if layer is not None else md.size
                if rows is not None:
                    shape = torch.Size((rows, *shape[1:]))
                self._sources[keys.state_dict_name(base, layer)] = _Source(
                    tuple((n, layer) for n in names), torch.Size(shape), md.properties.dtype)

    def __getitem__(self, key: str) -> torch.Tensor:
        source = self._sources[key]
        parts = [self._read(name, layer) for name, layer in source.parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def shape(self, key: str) -> torch.Size:
        return self._sources[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self._sources[key].dtype

    def _read(self, name: str, layer: Optional[int]) -> torch.Tensor:
        md = self._reader.read_metadata().state_dict_metadata[name]
        if layer is None:
            chunk = ChunkStorageMetadata(torch.Size([0] * len(md.size)), md.size)
        else:
            chunk = ChunkStorageMetadata(torch.Size([layer] + [0] * (len(md.size) - 1)), torch.Size([1, *md.size[1:]]))
        destination = torch.empty(chunk.sizes, dtype=md.properties.dtype)
        planner = _ChunkLoadPlanner(name, chunk, destination, self.directory, layer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({}, storage_reader=self._reader, planner=planner, no_dist=True)
        return destination[0] if layer is not None else destination


class _ChunkLoadPlanner(DefaultLoadPlanner):
    """Reads one box (`chunk`) of checkpoint tensor `name` into `destination`, from whatever
    chunks the ranks that saved it wrote."""

    def __init__(self, name, chunk, destination, directory, layer):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.name, self.chunk, self.destination = name, chunk, destination
        self.directory, self.layer = directory, layer

    def create_local_plan(self) -> LoadPlan:
        items = create_read_items_for_chunk_list(self.name, self.metadata.state_dict_metadata[self.name], [self.chunk])
        covered = sum(torch.Size(item.lengths).numel() for item in items)
        if covered != self.destination.numel():
            where = f" (layer {self.layer})" if self.layer is not None else ""
            raise CheckpointError(f"{self.directory} holds only {covered} of the {self.destination.numel()} values of "
                                  f"{self.name}{where}: a rank's shard was never written; save the checkpoint "
                                  f"again.")
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.destination


# ----------------------------------------------------------------------------- writing

@dataclass(frozen=True)
class Shard:
    """This rank's part of a tensor: `tensor` is the slice of the full tensor (of
    `global_shape`) that starts at `offset` along `dim`. gated=True: SwiGLU's fc1, whose
    local rows are [gate part; up part]; each half is the slice at `offset` of the full
    tensor's gate half and of its up half."""
    tensor: torch.Tensor
    global_shape: Tuple[int, ...]
    offset: int = 0
    dim: int = 0
    gated: bool = False

    @classmethod
    def of_rank(cls, tensor: torch.Tensor, dim: int, rank: int, size: int, gated: bool = False) -> "Shard":
        """Part `rank` of `size` equal parts along `dim` (tensor parallelism's split)."""
        full = list(tensor.shape)
        full[dim] *= size
        return cls(tensor, tuple(full), rank * tensor.shape[dim] // (2 if gated else 1), dim, gated)

    def chunks(self) -> List[Tuple[Tuple[int, ...], torch.Tensor]]:
        """[(global offsets, data)] as stored."""
        def at(offset):
            offsets = [0] * self.tensor.dim()
            offsets[self.dim] = offset
            return tuple(offsets)
        if not self.gated:
            return [(at(self.offset), self.tensor)]
        gate, up = torch.chunk(self.tensor, 2, dim=self.dim)
        return [(at(self.offset), gate), (at(self.global_shape[self.dim] // 2 + self.offset), up)]


LocalState = Mapping[str, Union[torch.Tensor, Shard, Sequence[Shard], object]]


def write_torch_dist(iteration_dir: str, full_state: Mapping[str, torch.Tensor], common: dict,
                     iteration: Optional[int] = None, write_tracker: bool = True,
                     objects: Optional[Mapping[str, object]] = None) -> None:
    """A torch_dist checkpoint of a whole model, from one process (a converter).

    full_state: megatron-core's TP=1 state-dict keys, layers numbered across the model;
    `_extra_state` entries optional (missing ones are written as None, as local layers hold
    them). common: common.pt (args, iteration, ...). objects: more sharded objects by their
    full names (e.g. "rng_state/shard_0.1_1.2": rank (0, 1)'s rng_state of a TP=2 run). The
    tracker file beside `iteration_dir` then names `iteration` (default: common["iteration"])."""
    iteration = common.get("iteration") if iteration is None else iteration
    if write_tracker:
        if iteration is None or os.path.basename(os.path.normpath(iteration_dir)) != f"iter_{int(iteration):07d}":
            raise CheckpointError(f"{iteration_dir} must be named iter_NNNNNNN after its iteration ({iteration}) for "
                                  f"Megatron-LM to find it; name it iter_{int(iteration or 0):07d} or pass "
                                  f"write_tracker=False.")
    _write(iteration_dir, full_state, dict(common, iteration=iteration) if iteration is not None else common,
           group=None, distributed=False, objects=objects)
    if write_tracker:
        tracker = os.path.join(os.path.dirname(os.path.normpath(iteration_dir)), TRACKER)
        write_atomically(tracker, lambda f, _: f.write(str(int(iteration)).encode()), durable=True)


def write_torch_dist_shards(iteration_dir: str, local_state: LocalState, common: dict,
                            group: Optional[dist.ProcessGroup] = None,
                            objects: Optional[Mapping[str, object]] = None) -> None:
    """Every rank of `group` (default: the world) writes its shards of one checkpoint, in parallel.

    local_state: {megatron-core key, layers numbered across the model (a pipeline stage adds
    its first layer's number; torch_dist_keys.shifted): a Shard, a list of Shards, or a plain
    tensor every rank holding it holds whole (written once)}; a rank with nothing to write
    passes {} and still calls (the save is collective). `_extra_state` entries and `objects`
    (this rank's sharded objects by full name, e.g. its rng_state) as in write_torch_dist.
    Rank 0 writes common.pt and metadata.json; the caller writes the tracker after this
    returns on every rank. An OSError of rank 0's writes is raised after the closing barrier,
    so no rank waits for it."""
    _write(iteration_dir, local_state, common, group=group, distributed=True, objects=objects)


def _write(iteration_dir: str, state: LocalState, common: dict, group, distributed: bool,
           objects: Optional[Mapping[str, object]] = None) -> None:
    _refuse_stand_ins(common)
    os.makedirs(iteration_dir, exist_ok=True)
    layer_counts = _layer_counts(state, group if distributed else None, distributed)
    items = _write_items(state, layer_counts) + [
        (WriteItem(index=MetadataIndex(name), type=WriteItemType.BYTE_IO), value)
        for name, value in (objects or {}).items()]
    planner = _ItemsSavePlanner(items)
    writer = dcp.FileSystemWriter(iteration_dir, thread_count=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({}, storage_writer=writer, planner=planner, process_group=group, no_dist=not distributed)
    error = None
    if not distributed or dist.get_rank(group) == 0:
        common = dict(common)
        common.setdefault("checkpoint_version", CHECKPOINT_VERSION)
        common.setdefault("content_metadata", {"singleton_local_shards": False})
        try:
            save_file(common, os.path.join(iteration_dir, "common.pt"))
            write_bytes_atomically(os.path.join(iteration_dir, "metadata.json"),
                                   json.dumps(BACKEND_METADATA).encode())
        except OSError as e:
            error = e
    if distributed:
        dist.barrier(group)
    if error is not None:
        raise error


def _layer_counts(state: LocalState, group, distributed: bool) -> Dict[str, int]:
    """{layer block: number of layers in the whole model} (the stacked axis' length)."""
    counts: Dict[str, int] = {}
    for key in state:
        block = keys.layer_block(key)
        if block is not None:
            counts[block] = max(counts.get(block, 0), keys.checkpoint_name(key)[1] + 1)
    if distributed:
        everyone: List[Dict[str, int]] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, counts, group=group)
        for theirs in everyone:
            for block, count in theirs.items():
                counts[block] = max(counts.get(block, 0), count)
    return counts


def extra_state_keys(state_keys) -> List[str]:
    """The `_extra_state` entries megatron-core's GPTModel, BertModel and T5Model ask a checkpoint
    for: one per linear module of each layer, and BERT's and T5's output layer, tied to the word
    table or not (GPTModel drops its own from its sharded state dict; a model with an `lm_head.`
    is a BertModel or a T5Model, whose head's output layer has a second name, lm_head.output_layer)."""
    state_keys = [key for key in state_keys if not key.startswith(OPTIMIZER_STATE)]
    wanted = [key[:-len("weight")] + "_extra_state" for key in state_keys
              if key.endswith(".weight") and keys.layer_block(key) and key[:-len(".weight")].endswith(keys.LAYER_LINEARS)]
    if any(key.startswith("lm_head.") for key in state_keys):   # BERT's output layer, tied or not (its bias)
        wanted.append("output_layer._extra_state")
    if any(key.startswith("lm_head.output_layer.") for key in state_keys):
        wanted.append("lm_head.output_layer._extra_state")
    return wanted


def _write_items(state: LocalState, layer_counts: Dict[str, int]) -> List[Tuple[WriteItem, object]]:
    extra = {key: None for key in extra_state_keys(state)}
    extra.update({key: value for key, value in state.items() if key.endswith("_extra_state") and key in extra})
    items = []
    for key, value in state.items():
        if key.endswith("_extra_state"):
            continue
        name, layer = keys.checkpoint_name(key)
        shards = [value] if isinstance(value, Shard) else list(value) if isinstance(value, (list, tuple)) else [
            Shard(value, tuple(value.shape))]
        for shard in shards:
            for offsets, data in shard.chunks():
                data = data.detach()
                size, offsets = tuple(shard.global_shape), tuple(offsets)
                if layer is not None:
                    size, offsets, data = (layer_counts[keys.layer_block(key)], *size), (layer, *offsets), data[None]
                items.append((_tensor_item(name, data, size, offsets), data.contiguous()))
    for key, value in extra.items():
        name, layer = keys.checkpoint_name(key)
        shard = f"shard_{layer}_{layer_counts[keys.layer_block(key)]}" if layer is not None else "shard_0_1"
        items.append((WriteItem(index=MetadataIndex(f"{name}/{shard}"), type=WriteItemType.BYTE_IO), value))
    return items


def _tensor_item(name: str, data: torch.Tensor, size, offsets) -> WriteItem:
    return WriteItem(index=MetadataIndex(name, torch.Size(offsets)), type=WriteItemType.SHARD,
                     tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(offsets), data.shape),
                                                 properties=TensorProperties.create_from_tensor(data),
                                                 size=torch.Size(size)))


class _ItemsSavePlanner(DefaultSavePlanner):
    """Saves exactly the given write items; DCP's global step drops the duplicates of
    replicated tensors and checks that the chunks of every tensor tile it without overlap."""

    def __init__(self, items: List[Tuple[WriteItem, object]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._items = items
        self._data = {item.index: data for item, data in items}

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan([item for item, _ in self._items])
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        data = self._data[write_item.index]
        if write_item.type == WriteItemType.BYTE_IO:
            buffer = io.BytesIO()
            torch.save([data], buffer)      # megatron-core stores a list of the rank's objects
            buffer.seek(0)
            return buffer
        return data


def _refuse_stand_ins(common: dict) -> None:
    """common.pt must pickle Megatron's own classes, which pickled_args' stand-ins are not."""
    stand_ins = tuple(entry[0] for entry in ARGS_ALLOWLIST if isinstance(entry, tuple))
    args = common.get("args")
    values = vars(args).items() if args is not None and hasattr(args, "__dict__") else ()
    for name, value in list(values) + list(common.items()):
        if isinstance(value, stand_ins) or (isinstance(value, (list, tuple)) and any(isinstance(v, stand_ins)
                                                                                    for v in value)):
            raise CheckpointError(f"common.pt would pickle {name}={value!r}, a stand-in for a megatron enum that "
                                  f"Megatron-LM cannot unpickle; set it to a plain value (e.g. its .name) before "
                                  f"writing.")
