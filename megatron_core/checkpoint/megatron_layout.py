"""Megatron-LM's checkpoint layout, as pure functions of (directory, iteration, ranks).

    <save>/latest_checkpointed_iteration.txt         "5" (or "release")
    <save>/iter_0000005/mp_rank_00/model_optim_rng.pt           PP = 1: one per TP rank
    <save>/iter_0000005/mp_rank_01_002/model_optim_rng.pt       PP > 1: TP rank 01, PP rank 002
    <save>/iter_0000005/mp_rank_00/distrib_optim_dp_001.pt      distributed optimizer: DP rank 1's shard

model_optim_rng.pt is written by data-parallel rank 0 of each (TP, PP) pair, as in
Megatron-LM. With the distributed optimizer every data-parallel rank writes its own shard
of the optimizer state next to it, as it was run (Megatron-LM instead gathers the shards
into one `distrib_optim.pt`; a shard file carries our backend's state, hence its own name).
A `release` tracker names the directory `release` (a converted checkpoint: weights only).
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from ..errors import CheckpointError
from .file_io import load_file
from .megatron_lm.args import ALLOWED_GLOBALS
from .megatron_lm.files import our_contents, written_by_megatron_lm

TRACKER = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
RELEASE = "release"
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")
_ITERATION_DIR = re.compile(r"^iter_(\d{7})$")


def tracker_path(directory: str) -> str:
    return os.path.join(directory, TRACKER)


def iteration_dir(directory: str, iteration: Optional[int]) -> str:
    """iteration None means a release checkpoint."""
    return os.path.join(directory, RELEASE if iteration is None else f"iter_{iteration:07d}")


def rank_dir_name(tensor_rank: int, pipeline_rank: int, pipeline_size: int) -> str:
    if pipeline_size > 1:
        return f"mp_rank_{tensor_rank:02d}_{pipeline_rank:03d}"
    return f"mp_rank_{tensor_rank:02d}"


def model_file(directory: str, iteration: Optional[int], tensor_rank: int, pipeline_rank: int,
               pipeline_size: int) -> str:
    return os.path.join(iteration_dir(directory, iteration), rank_dir_name(tensor_rank, pipeline_rank, pipeline_size),
                        MODEL_FILE)


def optimizer_shard_file(model_path: str, data_parallel_rank: int) -> str:
    return os.path.join(os.path.dirname(model_path), f"distrib_optim_dp_{data_parallel_rank:03d}.pt")


def parse_tracker(text: str, path: str) -> Optional[int]:
    """The iteration a tracker names (None: release); CheckpointError for anything else."""
    value = text.strip()
    if value == RELEASE:
        return None
    if not value.isdigit():
        raise CheckpointError(f"{path} holds {value!r}, not an iteration number or 'release'; write the iteration "
                              f"of a complete checkpoint into it, or remove it to start from scratch.")
    return int(value)


def saved_parallel_sizes(iteration_path: str) -> Optional[Tuple[int, int]]:
    """(TP, PP) a Megatron checkpoint directory was written with, read off its rank
    directories (None when it holds none)."""
    ranks: List[Tuple[int, int]] = []
    for name in os.listdir(iteration_path) if os.path.isdir(iteration_path) else []:
        match = _RANK_DIR.match(name)
        if match:
            ranks.append((int(match.group(1)), int(match.group(2) or 0)))
    if not ranks:
        return None
    return max(t for t, _ in ranks) + 1, max(p for _, p in ranks) + 1


class MegatronLayout:
    """The layout as the checkpointer uses it (deepspeed_layout.DeepSpeedLayout has the same face)."""
    name = "megatron"
    tracker_name = TRACKER

    def tracker_text(self, iteration: int) -> str:
        return str(iteration)

    def parse_tracker(self, text: str, path: str) -> Optional[int]:
        return parse_tracker(text, path)

    def iteration_dir(self, directory: str, iteration: Optional[int]) -> str:
        return iteration_dir(directory, iteration)

    def model_file(self, directory, iteration, tensor_rank, tensor_size, pipeline_rank, pipeline_size) -> str:
        return model_file(directory, iteration, tensor_rank, pipeline_rank, pipeline_size)

    def optimizer_shard_file(self, model_path: str, data_parallel_rank: int) -> str:
        return optimizer_shard_file(model_path, data_parallel_rank)

    def saved_parallel_sizes(self, iteration_path: str):
        return saved_parallel_sizes(iteration_path)

    def saved_iterations(self, directory: str) -> List[int]:
        names = os.listdir(directory) if os.path.isdir(directory) else []
        return sorted(int(m.group(1)) for m in map(_ITERATION_DIR.match, names) if m)

    def first_model_file(self, iteration_path: str) -> Optional[str]:
        names = sorted(n for n in os.listdir(iteration_path) if _RANK_DIR.match(n)) if os.path.isdir(
            iteration_path) else []
        return os.path.join(iteration_path, names[0], MODEL_FILE) if names else None

    def to_file(self, state: dict) -> dict:
        return state

    # Megatron-LM's own files pickle their args as a Namespace (megatron_lm/args.py)
    allowed_globals = ALLOWED_GLOBALS

    def from_file(self, state: dict, path: Optional[str] = None) -> dict:
        """Our contents; a file Megatron-LM wrote is read into them (megatron_lm/files.py)."""
        if written_by_megatron_lm(state):
            if path is None:
                raise CheckpointError("a Megatron-LM file was read without its path, which names its ranks; "
                                      "please report it.")
            return our_contents(state, path)
        return state

    def read(self, path: str, mmap: bool = False) -> dict:
        """The contents of the rank file `path` (tensors mapped with mmap=True)."""
        return self.from_file(load_file(path, mmap=mmap, allow=self.allowed_globals), path)
