"""Weight initializers, and the master-weight scheme that makes TP=k start equal to TP=1."""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import parallel_state as ps

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


def shard_of_master(master: torch.Tensor, partition_dim: int, stride: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of a full weight, Megatron's stride-aware split.

    The dimension is cut into world_size * stride equal chunks and rank r takes chunks
    r, r + world_size, ... . With stride > 1 a fused weight (e.g. [gate; up]) keeps
    each of its pieces split evenly across ranks.
    """
    full = master.shape[partition_dim]
    chunk = full // (world_size * stride)
    if chunk * world_size * stride != full:
        raise ValueError(f"dimension {full} cannot be split into {world_size} ranks x stride {stride}.")
    chunks = torch.split(master, chunk, dim=partition_dim)
    return torch.cat(chunks[rank::world_size], dim=partition_dim)


@torch.no_grad()
def initialize_affine_weight(weight: torch.Tensor, full_shape, partition_dim: int,
                             init_method: InitMethod, stride: int = 1) -> None:
    """Fill `weight` with this rank's shard of a full weight drawn from the default RNG.

    Every rank draws the whole master weight with the same generator state, so the
    shards of a TP=k run are exactly the slices of the TP=1 weight.
    """
    set_tensor_model_parallel_attributes(weight, True, partition_dim, stride)
    world = ps.get_tensor_model_parallel_world_size()
    master = torch.empty(full_shape, dtype=torch.float32)
    init_method(master)
    rank = ps.get_tensor_model_parallel_rank()
    weight.copy_(shard_of_master(master, partition_dim, stride, rank, world).to(weight.dtype))
