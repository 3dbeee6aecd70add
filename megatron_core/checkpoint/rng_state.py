"""Every random stream a rank draws from, as tensors and plain values (weights_only-safe).

Megatron-LM's key names: random_rng_state (Python), np_rng_state (numpy), torch_rng_state
(the default CPU generator), cuda_rng_state (only when CUDA is in use), rng_tracker_states
(the tensor-parallel tracker's named streams). Python's and numpy's states are tuples
holding a numpy array in their native form; here they become lists and int64 tensors so
that loading them needs no pickle globals.
"""
from __future__ import annotations

import random
from typing import Dict

import numpy as np
import torch

from ..mpu import random as mpu_random


def capture() -> Dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "random_rng_state": [version, list(internal), gauss],
        "np_rng_state": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                         "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": mpu_random.get_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
    return state


def restore(state: Dict) -> None:
    version, internal, gauss = state["random_rng_state"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["np_rng_state"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch_rng_state"])
    if "cuda_rng_state" in state and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    mpu_random.get_rng_tracker().set_states(state["rng_tracker_states"])
