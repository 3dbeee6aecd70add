"""Per-component initialization seeds.

Each component (the word embedding, the position embedding, transformer layer i, the
untied output layer, a family's heads) is built inside `component_rng(config, name, i)`:
the default generator is forked and reseeded from (init_seed, name, i). Its weights
therefore depend only on the config and its own name/index, never on which other
components were built before it. Consequences:
  * a pipeline stage that builds only layers k..n holds exactly the serial weights;
  * the last pipeline stage can build its copy of a tied word embedding with the same
    seed and get the first stage's table without any communication;
  * tensor-parallel ranks draw the same master weights (the mpu layers then slice them).
The caller's generator state is restored afterwards, so building a model does not
shift the dropout stream of the run.
"""
from __future__ import annotations

import contextlib
import zlib

import torch

from .config import TransformerConfig
from ..mpu.init_methods import init_method_normal, scaled_init_method_normal
from .meta_build import component_scope


def component_seed(init_seed: int, name: str, index: int = 0) -> int:
    """A stable 63-bit seed for one component (crc32 is stable across Python runs)."""
    return (init_seed * 1_000_003 + zlib.crc32(f"{name}:{index}".encode())) % (2**63 - 1)


@contextlib.contextmanager
def component_rng(config: TransformerConfig, name: str, index: int = 0):
    # Master weights are drawn on the CPU generator (mpu.initialize_affine_weight), so
    # forking the CPU generator is enough; CUDA generators are left alone.
    # component_scope: inside a meta or selective build (meta_build.py), the component's device.
    with torch.random.fork_rng(devices=[]), component_scope(name, index):
        torch.manual_seed(component_seed(config.init_seed, name, index))
        yield


def init_method(config: TransformerConfig):
    return init_method_normal(config.init_method_std)


def output_init_method(config: TransformerConfig):
    """Init for projections that write into the residual stream."""
    if config.use_scaled_init_method:
        return scaled_init_method_normal(config.init_method_std, config.num_layers)
    return init_method_normal(config.init_method_std)
