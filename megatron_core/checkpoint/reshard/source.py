"""A saved checkpoint as the resharder reads it: where its files are, its parallel sizes,
the sharding map of every pipeline chunk, and any tensor of it (weights or optimizer
state) by the whole model's key and a source tensor-parallel rank, read lazily.

The directory may be a --save directory with a tracker (latest_checkpointed_iteration.txt
or latest), or one iteration's directory (iter_0000005, global_step5, release) without
one. Both layouts; files are opened as memory maps (lazy_files.py).

Optimizer state. The native backend saves its optimizer positionally (torch's state
dict) with `params`: the chunk key, parameter name and flat element range of each
position. Gathering one parameter's pieces (over the data-parallel shard files of the
distributed optimizer, or the one entry of the plain optimizer) gives each state field
(exp_avg, exp_avg_sq, momentum_buffer, ...) in its parameter's shape, plus `fp32_master`
for a bf16/fp16 model's fp32 copy; a field without elements (Adam's step) is taken as is.
Such a per-parameter field splits over tensor-parallel ranks exactly as its parameter.
A checkpoint written by DeepSpeed's engine keeps its optimizer (and at ZeRO-3 its weights)
in DeepSpeed's ZeRO files instead; engine_source.py says where each parameter's elements
are, and the same per-parameter fields come out.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ...errors import CheckpointError
from ...mpu.sharding_map import ShardingMap, ShardSpec
from ..contents import PER_PARAMETER, model_keys
from ..formats import LAYOUTS, detect_layout, tracked_checkpoint
from ..manifest import Verification, check_intact
from ..megatron_lm.files import FORMAT_MARK, OPTIMIZER_UNREADABLE
from .engine_source import ENGINE_ONLY_KEYS, EngineOptimizer, engine_zero_stage, written_by_engine, zero3_model_file
from .lazy_files import DEFAULT_BUDGET_BYTES, FieldScratch, LazyFiles

_ITERATION_NAMES = {"megatron": re.compile(r"^iter_(\d{7})$"), "deepspeed": re.compile(r"^global_step(\d+)$")}


@dataclass(frozen=True)
class Owner:
    """Where the whole model's key lives in the source: pipeline rank, chunk key, local key."""
    pipeline_rank: int
    chunk: str
    key: str
    spec: ShardSpec


def locate(directory: str, preferred: str = "megatron") -> Tuple[object, str, Optional[int]]:
    """(layout, root directory, iteration; None for a release) of `directory`."""
    if detect_layout(directory, LAYOUTS[preferred]) is not None:
        layout, iteration, _ = tracked_checkpoint(directory, preferred, "checkpoint directory")
        return layout, directory, iteration
    name, parent = os.path.basename(os.path.normpath(directory)), os.path.dirname(os.path.normpath(directory))
    for layout_name, pattern in _ITERATION_NAMES.items():
        match = pattern.match(name)
        if match and LAYOUTS[layout_name].first_model_file(directory):
            return LAYOUTS[layout_name], parent, int(match.group(1))
    if name == "release":
        for layout in LAYOUTS.values():
            if layout.first_model_file(directory):
                return layout, parent, None
    # a --save directory without its tracker: its newest complete iteration
    saved = [(i, layout) for layout in LAYOUTS.values() for i in layout.saved_iterations(directory)
             if layout.first_model_file(layout.iteration_dir(directory, i))] if os.path.isdir(directory) else []
    if saved:
        iteration, layout = max(saved, key=lambda found: found[0])
        return layout, directory, iteration
    raise CheckpointError(f"{directory} holds no checkpoint: no latest_checkpointed_iteration.txt or latest file, "
                          f"and it is not an iteration directory (iter_NNNNNNN, global_stepN, release); pass the "
                          f"--save directory or one iteration's directory.")


class SavedCheckpoint:
    def __init__(self, directory: str, preferred: str = "megatron", budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 verify: Optional[Verification] = Verification()):
        """verify: the files checked against the checkpoint's manifest before any is opened
        (manifest.py); None when the caller has checked them."""
        self.layout, self.root, self.iteration = locate(directory, preferred)
        self.iteration_path = self.layout.iteration_dir(self.root, self.iteration)
        check_intact(self.iteration_path, verify)
        self.files = LazyFiles(self.layout.from_file, budget_bytes, allow=self.layout.allowed_globals)
        first = self.layout.first_model_file(self.iteration_path)
        if first is None:
            raise CheckpointError(f"{self.iteration_path} holds no model file; the checkpoint is incomplete or "
                                  f"not one of this package's layouts.")
        head = self.files.get(first)
        parallel = head.get("parallel")
        if not parallel or "sharding_map" not in head:
            raise CheckpointError(f"{first} carries no parallel sizes or sharding map (it was not saved by this "
                                  f"package; a Chinese-Transformer-XL checkpoint converts with "
                                  f"tools/convert_checkpoint.py --from-ctxl), so it cannot be read by its map.")
        self.parallel = dict(parallel)
        self.engine = written_by_engine(head)          # DeepSpeed's engine wrote it (engine_source.py)
        self.engine_stage = engine_zero_stage(head) if self.engine else None
        self._engine_optimizers: Dict[Tuple[int, int], EngineOptimizer] = {}
        self.tp = parallel["tensor_model_parallel_size"]
        self.pp = parallel["pipeline_model_parallel_size"]
        self.chunk_keys = [k for k in model_keys(parallel.get("virtual_pipeline_model_parallel_size") or 1)]
        self.head = {k: v for k, v in head.items() if k not in self.chunk_keys and k != "optimizer"
                     and not (written_by_engine(head) and k in ENGINE_ONLY_KEYS)}
        self.maps: Dict[Tuple[int, str], ShardingMap] = {}
        self.owners: Dict[str, Owner] = {}
        for pipeline_rank in range(self.pp):
            state = self.files.get(self.model_path(0, pipeline_rank))
            for chunk in self.chunk_keys:
                smap = ShardingMap.from_dict(state["sharding_map"][chunk])
                self.maps[(pipeline_rank, chunk)] = smap
                for key, spec in smap.tensors.items():
                    if spec.copy_of is None:
                        self.owners[smap.global_key(key)] = Owner(pipeline_rank, chunk, key, spec)
        self._optimizer_index: Dict[Tuple[int, int], Dict] = {}
        self._pieces_memo: Tuple = (None, None)     # optimizer_pieces of the key being read

    # --- files -----------------------------------------------------------------------------
    def model_path(self, tensor_rank: int, pipeline_rank: int) -> str:
        path = self.layout.model_file(self.root, self.iteration, tensor_rank, self.tp, pipeline_rank, self.pp)
        if not os.path.isfile(path) and os.path.isfile(zero3_model_file(path)):
            path = zero3_model_file(path)     # an engine's ZeRO-3 checkpoint: data-parallel rank 0's file
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; restore it or reshard an "
                                  f"earlier one.")
        return path

    def optimizer_paths(self, tensor_rank: int, pipeline_rank: int) -> List[str]:
        """The files holding this (TP, PP) rank's optimizer: its distributed shards, or the model file."""
        model = self.model_path(tensor_rank, pipeline_rank)
        optimizer = self.files.get(model).get("optimizer")
        if not self.parallel.get("use_distributed_optimizer") or (optimizer and PER_PARAMETER in optimizer) \
                or self.parallel.get(FORMAT_MARK):      # Megatron-LM's: read per parameter into the model file
            return [model]
        return [self.layout.optimizer_shard_file(model, d) for d in range(self.parallel["data_parallel_size"])]

    @property
    def padded_vocab_size(self) -> Optional[int]:
        return self.head.get("padded_vocab_size")

    def whole_model_map(self) -> ShardingMap:
        first = self.maps[(0, self.chunk_keys[0])]
        return ShardingMap({name: owner.spec for name, owner in self.owners.items()}, self.tp,
                           first.padded_vocab_size, first.vocab_size, {})

    # --- weights ---------------------------------------------------------------------------
    def weight(self, name: str, tensor_rank: int) -> torch.Tensor:
        owner = self.owner(name)
        path = self.model_path(tensor_rank, owner.pipeline_rank)
        saved = self.files.get(path)[owner.chunk].get(owner.key)
        if saved is None:
            raise CheckpointError(f"{path} holds no {owner.key}, which its sharding map lists: the file was changed "
                                  f"after it was written; restore it.")
        if self.engine_stage == 3:       # placeholders: the weights are the optimizer's fp32 partitions
            return self._engine_zero3_weight(owner, tensor_rank, saved.dtype)
        return saved

    def _engine_zero3_weight(self, owner: Owner, tensor_rank: int, dtype: torch.dtype) -> torch.Tensor:
        engine = self._engine(tensor_rank, owner.pipeline_rank)
        shapes = self.files.get(self.model_path(tensor_rank, owner.pipeline_rank))["param_shapes"]
        name = owner.key if self.chunk_keys == ["model"] else f"{owner.chunk[len('model'):]}.{owner.key}"
        shape = next(group[name] for group in shapes if name in group)
        out = torch.empty(math.prod(shape), dtype=dtype)
        for piece in engine.index[(owner.chunk, owner.key)]:
            self.files.copy(out[piece.first:piece.end], engine.fields(piece, with_master=True)["fp32_master"])
        return out.view(shape)

    def _engine(self, tensor_rank: int, pipeline_rank: int) -> EngineOptimizer:
        where = (tensor_rank, pipeline_rank)
        if where not in self._engine_optimizers:
            self._engine_optimizers[where] = EngineOptimizer(
                self.files, self.model_path(tensor_rank, pipeline_rank), self.files.get(
                    self.model_path(tensor_rank, pipeline_rank)), self.chunk_keys, self.parallel["data_parallel_size"])
        return self._engine_optimizers[where]

    def owner(self, name: str) -> Owner:
        if name not in self.owners:
            raise CheckpointError(f"{self.iteration_path} holds no tensor {name!r} in any pipeline stage; it was "
                                  f"saved from another model.")
        return self.owners[name]

    # --- optimizer -------------------------------------------------------------------------
    def has_optimizer(self) -> bool:
        if self.engine:
            return self._engine(0, 0).has_state()
        path = self.optimizer_paths(0, 0)[0]
        return os.path.isfile(path) and self.files.get(path).get("optimizer") is not None

    def optimizer_fields(self, name: str) -> Dict[str, object]:
        """{field: dtype for an element field, the value for a scalar one (step)} of `name`'s
        optimizer state, read from the files' indexes only."""
        if not self.has_optimizer_entry(name):
            return {}
        _, fields = self.optimizer_pieces(name, 0)
        return {field: value[0][2].dtype if isinstance(value, list) else value for field, value in fields.items()}

    def has_optimizer_entry(self, name: str) -> bool:
        owner = self.owner(name)
        if self.engine:
            return bool(self._engine(0, owner.pipeline_rank).index.get((owner.chunk, owner.key)))
        return bool(self._index(0, owner.pipeline_rank).get((owner.chunk, owner.key)))

    def _positional(self, path: str) -> dict:
        state = self.files.get(path)
        optimizer = state.get("optimizer")
        unreadable = (state.get("parallel") or {}).get(OPTIMIZER_UNREADABLE)   # megatron_lm/files.py
        if optimizer is None and unreadable:
            raise CheckpointError(unreadable)
        if optimizer is None:
            raise CheckpointError(f"{path} holds no optimizer state; reshard without it (--no-optim).")
        return optimizer

    def _index(self, tensor_rank: int, pipeline_rank: int) -> Dict:
        """{(chunk, name): [(file, position, first, end, fp32 master position)]} of one (TP, PP) rank."""
        where = (tensor_rank, pipeline_rank)
        if where not in self._optimizer_index:
            index: Dict = {}
            for path in self.optimizer_paths(tensor_rank, pipeline_rank):
                optimizer = self._positional(path)
                if PER_PARAMETER in optimizer:
                    for chunk, names in optimizer[PER_PARAMETER].items():
                        for name in names:
                            index[(chunk, name)] = [(path, None, None, None, None)]
                    continue
                if "params" not in optimizer:
                    raise CheckpointError(f"{path} holds optimizer state without parameter names (saved before "
                                          f"resharding existed); reshard it with --no-optim.")
                copied = 0
                for position, entry in enumerate(optimizer["params"]):
                    chunk, name, first, end = entry[:4]
                    master = None
                    if len(entry) > 4 and entry[4]:
                        master, copied = copied, copied + 1
                    index.setdefault((chunk, name), []).append((path, position, first, end, master))
            self._optimizer_index[where] = index
        return self._optimizer_index[where]

    def optimizer_pieces(self, name: str, tensor_rank: int) -> Tuple[torch.Size, Dict[str, object]]:
        """(the parameter's local shape at source tensor-parallel rank `tensor_rank`, {field:
        [(first, end, flat elements)] for an element field, the value for a scalar one (step)}).
        The elements are views of the mapped files (nothing read yet): one piece covering the
        whole parameter (the plain optimizer, a parameter inside one distributed shard), or
        several flat ranges over the data-parallel shard files."""
        if self._pieces_memo[0] == (name, tensor_rank):
            return self._pieces_memo[1]
        owner = self.owner(name)
        shape = self.weight(name, tensor_rank).shape
        numel = shape.numel()
        if self.engine:
            engine = self._engine(tensor_rank, owner.pipeline_rank)
            pieces = [(p.first, numel if p.end < 0 else p.end, engine.fields(p, self._keeps_master(name)))
                      for p in engine.index.get((owner.chunk, owner.key)) or ()]
        else:
            pieces = []
            for path, position, first, end, master in self._index(tensor_rank, owner.pipeline_rank).get(
                    (owner.chunk, owner.key)) or ():
                optimizer = self._positional(path)
                if position is None:   # already per parameter, in the parameter's shape
                    pieces.append((0, numel, optimizer[PER_PARAMETER][owner.chunk][owner.key]))
                    continue
                values = dict(optimizer["optimizer"]["state"].get(position, {}))
                if master is not None:
                    values["fp32_master"] = optimizer["fp32_master_weights"][master]
                pieces.append((first, end, values))
        if not pieces:
            raise CheckpointError(f"the optimizer state of {self.iteration_path} has no entry for {name!r}; "
                                  f"reshard it with --no-optim.")
        fields: Dict[str, object] = {}
        for first, end, values in pieces:
            for field, value in values.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    fields.setdefault(field, []).append((first, end, value.reshape(-1)))
                else:
                    fields.setdefault(field, self.files.clone(value) if isinstance(value, torch.Tensor) else value)
        self._pieces_memo = ((name, tensor_rank), (shape, fields))
        return shape, fields

    def optimizer_field(self, name: str, tensor_rank: int, field: str, scratch: "FieldScratch") -> torch.Tensor:
        """Element field `field` of `name`'s optimizer state at source rank `tensor_rank`, in the
        parameter's local shape: a view of the mapped file when one piece holds it whole (the
        caller reads it with files.copy), else its pieces read into `scratch`'s reused buffer."""
        shape, fields = self.optimizer_pieces(name, tensor_rank)
        pieces = fields[field]
        numel = shape.numel()
        if len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][1] == numel:
            return pieces[0][2].view(shape)
        return scratch.assemble((name, tensor_rank, field), numel, pieces, self.files).view(shape)

    def _keeps_master(self, name: str) -> bool:
        """An engine's fp32 partition is carried as fp32_master for a bf16/fp16 model (an fp32
        model's weights are those values already)."""
        owner = self.owner(name)
        return self.files.get(self.model_path(0, owner.pipeline_rank))[owner.chunk][owner.key].dtype != torch.float32
