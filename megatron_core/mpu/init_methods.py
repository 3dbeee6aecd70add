"""Weight initializers, and the master-weight scheme that makes TP=k start equal to TP=1."""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import parallel_state as ps
from .layout import shard_tensor

InitMethod = Callable[[torch.Tensor], torch.Tensor]


def init_method_normal(sigma: float) -> InitMethod:
    def init_(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=sigma)
    return init_


def scaled_init_method_normal(sigma: float, num_layers: int) -> InitMethod:
    """Output projections: std / sqrt(2 * num_layers), as in Megatron and GPT-2."""
    return init_method_normal(sigma / math.sqrt(2.0 * num_layers))


def xavier_normal(tensor: torch.Tensor) -> torch.Tensor:
    return torch.nn.init.xavier_normal_(tensor)


def set_tensor_model_parallel_attributes(tensor: torch.Tensor, is_parallel: bool, dim: int, stride: int) -> None:
    tensor.tensor_model_parallel = is_parallel
    tensor.partition_dim = dim
    tensor.partition_stride = stride


def param_is_tensor_parallel(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def mark_vocab_parallel(param: torch.Tensor) -> None:
    """Say that `param`'s tensor-parallel dimension is the (padded) vocabulary: embedding
    tables, untied output layers, output biases. A resharding tool may re-pad it."""
    if not param_is_tensor_parallel(param):
        raise ValueError("only a tensor-parallel parameter can be split over the vocabulary.")
    param.vocab_parallel = True


@torch.no_grad()
def initialize_affine_weight(weight: torch.Tensor, full_shape, partition_dim: int,
                             init_method: InitMethod, stride: int = 1) -> None:
    """Fill `weight` with this rank's shard of a full weight drawn from the default RNG.

    Every rank draws the whole master weight with the same generator state, so the
    shards of a TP=k run are exactly the slices of the TP=1 weight. A meta weight (a build
    for shapes only, parameter_device.py) is marked and nothing is drawn.
    """
    set_tensor_model_parallel_attributes(weight, True, partition_dim, stride)
    if weight.is_meta:
        return
    world = ps.get_tensor_model_parallel_world_size()
    master = torch.empty(full_shape, dtype=torch.float32)
    init_method(master)
    rank = ps.get_tensor_model_parallel_rank()
    weight.copy_(shard_tensor(master, partition_dim, rank, world, stride).to(weight.dtype))
