"""The `rng_state` entry of a file Megatron-LM loads, in its own form.

Megatron-LM's load_checkpoint restores rng_state[0] (data-parallel random init off) unless
--finetune or --no-load-rng, and stops when it lacks a key or its tracker states are empty:

    [{"random_rng_state": random.getstate() (a tuple), "np_rng_state": np.random.get_state(),
      "torch_rng_state": the CPU generator's state, "cuda_rng_state": a CUDA generator's,
      "rng_tracker_states": {"data-parallel-rng", "model-parallel-rng", "expert-parallel-rng"}}]

A CUDA generator's state is its seed and Philox offset (8 little-endian bytes each). Our own
runs keep CPU generators in their trackers, whose states a GPU cannot take, so the tracker
and CUDA states are written as Megatron-LM's model_parallel_cuda_manual_seed leaves them for
the stage's seed (--seed + 100 x pipeline rank): the data-parallel stream at the seed, the
tensor-parallel one at seed + 2718 + TP rank, the expert one at seed + 1024 + TP rank. The
Python, numpy and CPU torch states are the checkpoint's own (ours keeps them as plain values,
rng_state.py) or, without one, freshly seeded the same way.
"""
from __future__ import annotations

import random
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch


def cuda_generator_state(seed: int, offset: int = 0) -> torch.Tensor:
    """What torch.cuda.get_rng_state() gives after torch.cuda.manual_seed(seed), at `offset`."""
    packed = int(seed).to_bytes(8, "little") + int(offset).to_bytes(8, "little", signed=True)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8).clone()


def _host_states(saved: Optional[Mapping], seed: int) -> Dict:
    if saved and {"random_rng_state", "np_rng_state", "torch_rng_state"} <= set(saved):
        version, internal, gauss = saved["random_rng_state"]
        state = saved["np_rng_state"]
        return {"random_rng_state": (version, tuple(internal), gauss),
                "np_rng_state": (state["name"], state["keys"].numpy().astype(np.uint32), int(state["pos"]),
                                 int(state["has_gauss"]), float(state["cached_gaussian"])),
                "torch_rng_state": saved["torch_rng_state"]}
    return {"random_rng_state": random.Random(seed).getstate(),
            "np_rng_state": np.random.RandomState(seed).get_state(),
            "torch_rng_state": torch.Generator().manual_seed(seed).get_state()}


def megatron_rng_state(saved: List[Mapping], seed: int, tensor_rank: int, pipeline_rank: int) -> List[Dict]:
    """rng_state for the file of (tensor_rank, pipeline_rank); `saved`: our checkpoint's entries."""
    stage_seed = int(seed) + 100 * pipeline_rank
    entry = _host_states(saved[0] if saved else None, stage_seed)
    entry["cuda_rng_state"] = cuda_generator_state(stage_seed)
    entry["rng_tracker_states"] = {"data-parallel-rng": cuda_generator_state(stage_seed),
                                   "model-parallel-rng": cuda_generator_state(stage_seed + 2718 + tensor_rank),
                                   "expert-parallel-rng": cuda_generator_state(stage_seed + 1024 + tensor_rank)}
    return [entry]


def torch_dist_rng_name(tensor_rank: int, tensor_size: int, pipeline_rank: int, pipeline_size: int) -> str:
    """The sharded object a torch_dist checkpoint keeps one rank's rng_state under (its load asks
    for those of its own TP x PP unless --no-load-rng)."""
    return f"rng_state/shard_{pipeline_rank}.{tensor_rank}_{pipeline_size}.{tensor_size}"


def torch_dist_rng_object(saved: List[Mapping], seed: int, tensor_rank: int, tensor_size: int, pipeline_rank: int,
                          pipeline_size: int) -> Dict[str, List[Dict]]:
    """{its sharded object's name: rng_state} of one (TP, PP) rank of a torch_dist checkpoint."""
    return {torch_dist_rng_name(tensor_rank, tensor_size, pipeline_rank, pipeline_size):
            megatron_rng_state(saved, seed, tensor_rank, pipeline_rank)}
