"""Megatron-LM's checkpoint files (0.16.1 megatron/training/checkpointing.py), written and read
by megatron-core inside a gloo rank.

torch format ("legacy"): one file per (TP, PP) rank, written by data-parallel rank 0,

    <dir>/latest_checkpointed_iteration.txt              "7" (or "release"), written last by rank 0
    <dir>/iter_0000007/mp_rank_{tp:02d}/model_optim_rng.pt              PP = 1
    <dir>/iter_0000007/mp_rank_{tp:02d}_{pp:03d}/model_optim_rng.pt     PP > 1

holding generate_state_dict's dict: args (argparse.Namespace), checkpoint_version 3.0,
iteration, model (model.state_dict_for_save_checkpoint(): megatron-core names, no "module."
prefix, `_extra_state` entries None for the local spec; with virtual pipeline chunks model0,
model1, ..., each chunk's layers numbered from 0), optimizer (optimizer.state_dict())
and opt_param_scheduler unless --no-save-optim, rng_state (megatron_lm_rng.py), and
num_floating_point_operations_so_far. rerun_state_machine is absent: its state is None unless
a rerun is in progress. With --use-distributed-optimizer, "optimizer" is the distributed
optimizer's state_dict() (its param groups, each with Adam's step, and no per-parameter
state), and every data-parallel rank first takes part in save_parameter_state, which gathers
the moments and fp32 main parameters to data-parallel rank 0 and writes them beside the
rank's file:

    <dir>/iter_0000007/mp_rank_{tp:02d}[_{pp:03d}]/distrib_optim.pt

torch_dist: the same dict with model.sharded_state_dict() (and optimizer.sharded_state_dict,
rng_state as a ShardedObject) handed to dist_checkpointing.save(state, <dir>/iter_0000007);
tensors land in __<rank>_<n>.distcp files with a .metadata index, the rest (args,
checkpoint_version, iteration, ...) in common.pt, and metadata.json names the backend.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

CHECKPOINT_VERSION = 3.0
FILE_NAME = "model_optim_rng.pt"
DISTRIB_OPTIM_NAME = "distrib_optim.pt"
TRACKER_NAME = "latest_checkpointed_iteration.txt"


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def rank_file(root: str, iteration: int, tp_rank: int, pp_rank: int, pp_size: int) -> str:
    name = f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp_size > 1 else "")
    return os.path.join(iteration_dir(root, iteration), name, FILE_NAME)


def read_tracker(root: str) -> int:
    with open(os.path.join(root, TRACKER_NAME)) as f:
        return int(f.read().strip())


def _write_tracker(root: str, iteration: int) -> None:
    # Megatron-LM: every rank has written (barrier), then rank 0 announces the iteration.
    dist.barrier()
    if dist.get_rank() == 0:
        with open(os.path.join(root, TRACKER_NAME), "w") as f:
            f.write(str(iteration))
    dist.barrier()


def file_state_dict(args, iteration: int, model_state, rng_state, optimizer_state=None, scheduler_state=None) -> dict:
    """generate_state_dict's dict, in its key order (plus save_checkpoint's FLOPs count). A list
    `model_state` holds virtual pipeline chunks, which go in as model0, model1, ..."""
    state = {"args": args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration}
    chunks = model_state if isinstance(model_state, list) else [model_state]
    for index, chunk in enumerate(chunks):
        state["model" if len(chunks) == 1 else f"model{index}"] = chunk
    if optimizer_state is not None:
        state["optimizer"] = optimizer_state
        state["opt_param_scheduler"] = scheduler_state
    state["rng_state"] = rng_state
    state["num_floating_point_operations_so_far"] = 0
    return state


def save_torch_format(root: str, state: dict, distributed_optimizer=None) -> None:
    """Every rank calls it; data-parallel rank 0 writes the rank file (Megatron-LM's order: the
    distributed optimizer's collective save_parameter_state first)."""
    from megatron.core import parallel_state as ps

    iteration = state["iteration"]
    path = rank_file(root, iteration, ps.get_tensor_model_parallel_rank(),
                     ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if distributed_optimizer is not None:
        distributed_optimizer.save_parameter_state(os.path.join(os.path.dirname(path), DISTRIB_OPTIM_NAME))
    if ps.get_data_parallel_rank() == 0:
        torch.save(state, path)
    _write_tracker(root, iteration)


def save_torch_dist(root: str, state: dict, content_metadata: dict | None = None) -> None:
    """dist_checkpointing.save with the content metadata Megatron-LM's save_checkpoint passes."""
    from megatron.core import dist_checkpointing

    directory = iteration_dir(root, state["iteration"])
    if dist.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(state, directory, content_metadata=content_metadata)
    _write_tracker(root, state["iteration"])


def load_torch_format(root: str) -> dict:
    """This rank's file, as _load_base_checkpoint reads it (tracker, then the rank's name)."""
    from megatron.core import parallel_state as ps

    path = rank_file(root, read_tracker(root), ps.get_tensor_model_parallel_rank(),
                     ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size())
    # Megatron-LM's torch.load(map_location='cpu') predates weights_only; the harness trusts its files.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_torch_dist(root: str, sharded_state: dict) -> dict:
    """dist_checkpointing.load with the classes Megatron-LM allows in common.pt (its safe_globals.py,
    which Megatron-LM registers at start)."""
    from megatron.core import dist_checkpointing
    from megatron.core.safe_globals import SAFE_GLOBALS

    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return dist_checkpointing.load(sharded_state, iteration_dir(root, read_tracker(root)))


def strict_load_error(model, model_state: dict) -> str | None:
    """load_state_dict(strict=True)'s message, verbatim, or None when it loads.

    Megatron-LM 0.16.1's load_checkpoint catches this error, retries with strict=False and only
    prints the missing and unexpected keys; the harness stops instead, since such a file loads
    with some weights left at their initial values."""
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as error:
        return str(error)
    return None
