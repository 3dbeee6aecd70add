"""Megatron-LM's `rng_state` checkpoint entry, written on a machine without CUDA.

Megatron-LM's get_rng_state (data_parallel_random_init off) saves a one-element list, the
entry for data-parallel rank 0:

    [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
      "torch_rng_state": torch.get_rng_state(),            # uint8 [5056]
      "cuda_rng_state": torch.cuda.get_rng_state(),        # uint8 [16]
      "rng_tracker_states": {"data-parallel-rng": ..., "model-parallel-rng": ...,
                             "expert-parallel-rng": ...}}] # uint8 [16] each

In torch_dist checkpoints the list is wrapped in a ShardedObject keyed "rng_state" with global
shape (PP, TP) and offset (pp_rank, tp_rank). load_checkpoint restores rng_state[0] and exits
if rng_tracker_states is empty, so the CUDA states cannot be left out. A CUDA generator's state
is its seed and its Philox offset, 8 little-endian bytes each; the harness writes what
model_parallel_cuda_manual_seed leaves after seeding (offset 0): the data-parallel seed, seed
+ 2718 + tp_rank for tensor-parallel regions, seed + 1024 + 100 * ep_rank + etp_rank for
experts (ep_rank 0, etp_rank = tp_rank here), where seed is the stage's seed.
"""
from __future__ import annotations

import random

import numpy as np
import torch

RNG_STATE_KEYS = ("random_rng_state", "np_rng_state", "torch_rng_state", "cuda_rng_state", "rng_tracker_states")


def cuda_generator_state(seed: int, offset: int = 0) -> torch.Tensor:
    """What torch.cuda.get_rng_state() returns after torch.cuda.manual_seed(seed)."""
    packed = seed.to_bytes(8, "little") + offset.to_bytes(8, "little", signed=True)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8).clone()


def megatron_rng_state(stage_seed: int, tp_rank: int) -> list:
    tracker = {"data-parallel-rng": cuda_generator_state(stage_seed),
               "model-parallel-rng": cuda_generator_state(stage_seed + 2718 + tp_rank),
               "expert-parallel-rng": cuda_generator_state(stage_seed + 1024 + tp_rank)}
    return [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
             "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": cuda_generator_state(stage_seed),
             "rng_tracker_states": tracker}]


def restore_rng_state(rng_state: list) -> None:
    """Megatron-LM's load_checkpoint for rng_state[0], minus the CUDA generators; it raises
    where Megatron-LM would print 'Unable to load rng state' and exit."""
    entry = rng_state[0]
    missing = [key for key in RNG_STATE_KEYS if key not in entry]
    if missing or not entry["rng_tracker_states"]:
        raise KeyError(f"rng_state[0] lacks {missing or ['rng_tracker_states (empty)']}: "
                       "Megatron-LM would print 'Unable to load rng state from checkpoint' and exit")
    random.setstate(entry["random_rng_state"])
    np.random.set_state(entry["np_rng_state"])
    torch.set_rng_state(entry["torch_rng_state"])
