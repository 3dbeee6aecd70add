"""A checkpoint written by DeepSpeed's engine (`--deepspeed`, checkpoint/deepspeed_engine.py)
as the resharder reads it: which parameter elements every ZeRO file holds.

The engine's model-states file is our model file with DeepSpeed's keys around it (so the
weights, maps and counters read as usual), but its optimizer state is DeepSpeed's own:

    ZeRO 1/2 (and bf16 at any stage <= 2), <tag>/[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt:
      optimizer_state_dict.param_slice_mappings[g]    {parameter name: fragment_address(numel, start)}:
          the part of each parameter in data-parallel rank D's partition of group g, at
          `start` in that partition. The parameters lie back to back in a group's flat
          buffer, so a parameter's fragments over D = 0, 1, ... are its elements in order.
      optimizer_state_dict.single_partition_of_fp32_groups[g]   the fp32 weights of the partition
      optimizer_state_dict.base_optimizer_state       the torch optimizer's state of the flat
          partitions ({"state": {g: fields}} or, elastic, [fields of g]); exp_avg etc. are
          indexed like the fp32 partition
    ZeRO 3, the same files: optimizer_state_dict.fp32_flat_groups (one flat partition per
      sub-group) and .optimizer_state_dict (the torch optimizer's, one position per sub-group).
      Every parameter is cut into ceil(numel / D) pieces, piece D on rank D, placed one
      after another in the concatenation of the sub-groups in the order of the model-states
      file's param_shapes (what DeepSpeed's zero_to_fp32 assumes). The weights themselves
      are only there: the model-states files (zero_pp_rank_D_mp_rank_XX_model_states.pt)
      hold empty placeholders.
    ZeRO 0 in fp32: the torch optimizer's state dict in the model-states file (`optimizer`),
      positional; `optimizer_param_names` (written by our engine files since this reader
      exists) names its positions. An older file without it has no optimizer to carry.

Parameter names are the engine module's: the chunk's own keys, or "<i>.<key>" for virtual
pipeline chunks in a ModuleList. A Piece says where elements [first, end) of a flattened
parameter are: file, flat offset `start` (over the file's groups, concatenated).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ...errors import CheckpointError

OPTIMIZER_PARAM_NAMES = "optimizer_param_names"
# DeepSpeed's bookkeeping in an engine's model-states file, meaningless once resharded.
ENGINE_ONLY_KEYS = frozenset({"ds_config", "ds_version", "param_shapes", "frozen_param_shapes", "shared_params",
                              "frozen_param_fragments", "buffer_names", "data_sampler", "random_ltd",
                              "checkpoint_parallel_dimensions", "global_steps", "global_samples", "skipped_steps",
                              "dp_world_size", "mp_world_size", OPTIMIZER_PARAM_NAMES})


def written_by_engine(head: dict) -> bool:
    """An engine checkpoint carries DeepSpeed's config; our own DeepSpeed-layout files write None."""
    return head.get("ds_config") is not None


def engine_zero_stage(head: dict) -> int:
    return int(((head.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0) or 0)


def deepspeed_state_classes() -> list:
    """The classes DeepSpeed's own optimizer state pickles (its ZeRO optim_states files), each
    a plain holder of numbers: a fragment's offsets, the stage enum, the loss scalers. Loading
    allows these by name and nothing else (torch.serialization.safe_globals)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler]


def allowed_classes() -> list:
    """DeepSpeed's plain state classes that its ZeRO files pickle (the engine's own loads allow the same)."""
    try:
        return deepspeed_state_classes()
    except ImportError as e:
        raise CheckpointError(f"reading the ZeRO optimizer files of a DeepSpeed-engine checkpoint needs the "
                              f"deepspeed package ({e}); install it (pip install 'mcore-pretrain[deepspeed]') or "
                              f"drop the optimizer (--no-optim).") from None


def zero3_model_file(path: str) -> str:
    """ZeRO-3's model-states file of data-parallel rank 0 beside DeepSpeed's usual name."""
    return os.path.join(os.path.dirname(path), "zero_pp_rank_0_" + os.path.basename(path))


def zero_optimizer_files(model_path: str, data_parallel_size: int) -> List[str]:
    """[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt for every D (empty when there are none)."""
    directory, name = os.path.dirname(model_path), os.path.basename(model_path)
    mp = name[name.index("mp_rank_"):][len("mp_rank_"):][:2]
    for prefix in ("", "bf16_"):
        paths = [os.path.join(directory, f"{prefix}zero_pp_rank_{d}_mp_rank_{mp}_optim_states.pt")
                 for d in range(data_parallel_size)]
        if all(os.path.isfile(p) for p in paths):
            return paths
    return []


@dataclass(frozen=True)
class Piece:
    path: str
    first: int      # element range of the flattened parameter
    end: int
    start: int      # offset in the file's groups, concatenated


def chunk_and_key(name: str, chunk_keys: List[str]) -> Tuple[str, str]:
    if chunk_keys == ["model"]:
        return "model", name
    index, _, key = name.partition(".")
    return f"model{index}", key


class EngineOptimizer:
    """One (TP, PP) rank's engine optimizer state: {(chunk, key): [Piece]} and the fields of a piece."""

    def __init__(self, files, model_path: str, head: dict, chunk_keys: List[str], data_parallel_size: int):
        self.files, self.model_path = files, model_path
        self.stage = engine_zero_stage(head)
        self.paths = zero_optimizer_files(model_path, data_parallel_size)
        self.index: Dict[Tuple[str, str], List[Piece]] = {}
        if self.paths:
            self._allowed = allowed_classes()
            if self.stage == 3:
                self._index_zero3(head, chunk_keys, data_parallel_size)
            else:
                self._index_partitions(chunk_keys)
        else:
            self._allowed = []
            self._index_positions(chunk_keys)

    def has_state(self) -> bool:
        return bool(self.index)

    def _optimizer(self, path: str) -> dict:
        state = self.files.get(path, self._allowed)
        optimizer = state.get("optimizer")
        if optimizer is None:
            raise CheckpointError(f"{path} holds no optimizer state; reshard it with --no-optim.")
        return optimizer

    # --- where each parameter's elements are ------------------------------------------------
    def _index_partitions(self, chunk_keys: List[str]) -> None:
        done: Dict[str, int] = {}
        for path in self.paths:
            optimizer = self._optimizer(path)
            sizes = [t.numel() for t in optimizer["single_partition_of_fp32_groups"]]
            offsets = [sum(sizes[:g]) for g in range(len(sizes))]
            for g, mapping in enumerate(optimizer["param_slice_mappings"]):
                for name, address in mapping.items():
                    first = done.get(name, 0)
                    done[name] = first + address.numel
                    self.index.setdefault(chunk_and_key(name, chunk_keys), []).append(
                        Piece(path, first, first + address.numel, offsets[g] + address.start))

    def _index_zero3(self, head: dict, chunk_keys: List[str], size: int) -> None:
        offset = 0
        for group in head["param_shapes"]:
            for name, shape in group.items():
                numel = math.prod(shape)
                piece = math.ceil(numel / size)
                for d, path in enumerate(self.paths):
                    first, end = d * piece, min(numel, (d + 1) * piece)
                    if first < end:
                        self.index.setdefault(chunk_and_key(name, chunk_keys), []).append(
                            Piece(path, first, end, offset))
                offset += piece

    def _index_positions(self, chunk_keys: List[str]) -> None:
        state = self.files.get(self.model_path)
        names = state.get(OPTIMIZER_PARAM_NAMES)
        optimizer = state.get("optimizer")
        if self.stage != 0 or not names or not optimizer or "state" not in optimizer:
            return
        position = 0
        for group in names:
            for name in group:
                self.index[chunk_and_key(name, chunk_keys)] = [Piece(self.model_path, 0, -1, position)]
                position += 1

    # --- the fields of a piece --------------------------------------------------------------
    def fields(self, piece: Piece, with_master: bool) -> Dict[str, object]:
        """{field: flat elements [first, end) or a scalar (step)}; "fp32_master" when asked."""
        if piece.end < 0:   # ZeRO-0: one position of the torch optimizer, the whole parameter
            return {k: v.reshape(-1) if isinstance(v, torch.Tensor) and v.dim() else v
                    for k, v in self._optimizer(piece.path)["state"].get(piece.start, {}).items()}
        optimizer = self._optimizer(piece.path)
        if self.stage == 3:
            masters, base = optimizer["fp32_flat_groups"], optimizer["optimizer_state_dict"]
        else:
            masters, base = optimizer["single_partition_of_fp32_groups"], optimizer["base_optimizer_state"]
        group, start = self._locate(masters, piece.start)
        numel = piece.end - piece.first
        states = base["state"] if isinstance(base, dict) else dict(enumerate(base))
        out: Dict[str, object] = {}
        for field, value in states.get(group, {}).items():
            is_elements = isinstance(value, torch.Tensor) and value.dim() > 0
            out[field] = value.reshape(-1)[start:start + numel] if is_elements else value
        if "step" not in out and "base_optimizer_state_step" in optimizer:
            out["step"] = optimizer["base_optimizer_state_step"]
        if with_master:
            out["fp32_master"] = masters[group].reshape(-1)[start:start + numel]
        return out

    @staticmethod
    def _locate(groups, offset: int) -> Tuple[int, int]:
        for g, tensor in enumerate(groups):
            if offset < tensor.numel():
                return g, offset
            offset -= tensor.numel()
        raise CheckpointError("a DeepSpeed ZeRO file's partitions are shorter than its parameter map says; the "
                              "checkpoint is damaged: restore it or reshard with --no-optim.")

    def element_count(self, key: Tuple[str, str]) -> Optional[int]:
        pieces = self.index.get(key)
        return max(p.end for p in pieces) if pieces and pieces[0].end >= 0 else None
