"""Thin wrappers over torch.distributed collectives used by the mappings.

torch renamed the flat-tensor collectives (all_gather_into_tensor -> all_gather_single);
these wrappers pick whichever the installed torch has, so the rest of the code does
not care.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def all_gather_first_dim(tensor: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0."""
    world = dist.get_world_size(group)
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    output = torch.empty((world * tensor.shape[0],) + tuple(tensor.shape[1:]),
                         dtype=tensor.dtype, device=tensor.device)
    _all_gather_flat(output, tensor, group=group)
    return output


def reduce_scatter_first_dim(tensor: torch.Tensor, group) -> torch.Tensor:
    """Sum over ranks, then keep this rank's slice of dim 0."""
    world = dist.get_world_size(group)
    if world == 1:
        return tensor
    if tensor.shape[0] % world != 0:
        raise ValueError(f"sequence dimension {tensor.shape[0]} is not divisible by the "
                         f"tensor-parallel size {world}; pad the sequence length to a multiple of {world}.")
    tensor = tensor.contiguous()
    output = torch.empty((tensor.shape[0] // world,) + tuple(tensor.shape[1:]),
                         dtype=tensor.dtype, device=tensor.device)
    _reduce_scatter_flat(output, tensor, group=group)
    return output


def all_gather_last_dim(tensor: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's `tensor` along the last dimension."""
    world = dist.get_world_size(group)
    if world == 1:
        return tensor
    # Gather along dim 0 of a moved copy: one flat collective instead of a list of tensors.
    moved = tensor.movedim(-1, 0).contiguous()
    gathered = all_gather_first_dim(moved, group)
    return gathered.movedim(0, -1).contiguous()


def all_reduce(tensor: torch.Tensor, group) -> torch.Tensor:
    if dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, group=group)
    return tensor
