"""Autograd functions that move activations into and out of tensor-parallel regions.

Each forward collective is paired with its adjoint in backward:
    copy_to        identity      / all-reduce
    reduce_from    all-reduce    / identity
    scatter_to     split last    / all-gather last
    gather_from    all-gather last / split last
Sequence parallelism (activations split along the sequence, dim 0):
    scatter_to_sequence_parallel_region   split dim 0      / all-gather dim 0
    gather_from_sequence_parallel_region  all-gather dim 0 / reduce-scatter dim 0
    reduce_scatter_to_sequence_parallel_region  reduce-scatter dim 0 / all-gather dim 0
"""
from __future__ import annotations

import torch

from . import parallel_state as ps
from .collectives import all_gather_first_dim, all_gather_last_dim, all_reduce, reduce_scatter_first_dim
from .utils import divide


def _tp_group():
    return ps.get_tensor_model_parallel_group()


def _split_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    world = ps.get_tensor_model_parallel_world_size()
    if world == 1:
        return tensor
    size = divide(tensor.shape[-1], world, "last dimension")
    rank = ps.get_tensor_model_parallel_rank()
    return tensor.narrow(-1, rank * size, size).contiguous()


def _split_first_dim(tensor: torch.Tensor) -> torch.Tensor:
    world = ps.get_tensor_model_parallel_world_size()
    if world == 1:
        return tensor
    size = divide(tensor.shape[0], world, "sequence dimension")
    rank = ps.get_tensor_model_parallel_rank()
    return tensor.narrow(0, rank * size, size).contiguous()


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if ps.get_tensor_model_parallel_world_size() == 1:
        return tensor
    return all_reduce(tensor.clone(), _tp_group())


class _CopyToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return input_

    @staticmethod
    def backward(ctx, grad_output):
        return _all_reduce(grad_output)


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _all_reduce(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class _ScatterToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _split_last_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return all_gather_last_dim(grad_output, _tp_group())


class _GatherFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return all_gather_last_dim(input_, _tp_group())

    @staticmethod
    def backward(ctx, grad_output):
        return _split_last_dim(grad_output)


class _ScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _split_first_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return all_gather_first_dim(grad_output, _tp_group())


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, tensor_parallel_output_grad: bool = True):
        ctx.tensor_parallel_output_grad = tensor_parallel_output_grad
        return all_gather_first_dim(input_, _tp_group())

    @staticmethod
    def backward(ctx, grad_output):
        # If the consumer of the gathered tensor is itself tensor-parallel (a column
        # linear), each rank holds a partial gradient that must be summed; otherwise the
        # gradient is already complete and each rank just keeps its slice.
        if ctx.tensor_parallel_output_grad:
            return reduce_scatter_first_dim(grad_output, _tp_group()), None
        return _split_first_dim(grad_output), None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return reduce_scatter_first_dim(input_, _tp_group())

    @staticmethod
    def backward(ctx, grad_output):
        return all_gather_first_dim(grad_output, _tp_group())


def _one_tensor_rank() -> bool:
    """Every tensor-parallel mapping is the identity both ways on a group of one: skip the
    autograd Function (its per-call overhead shows in one-token decoding steps)."""
    return ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() == 1


def copy_to_tensor_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    return input_ if _one_tensor_rank() else _CopyToTensorParallelRegion.apply(input_)


def reduce_from_tensor_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    return input_ if _one_tensor_rank() else _ReduceFromTensorParallelRegion.apply(input_)


def scatter_to_tensor_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    return input_ if _one_tensor_rank() else _ScatterToTensorParallelRegion.apply(input_)


def gather_from_tensor_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    return input_ if _one_tensor_rank() else _GatherFromTensorParallelRegion.apply(input_)


def scatter_to_sequence_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    return _ScatterToSequenceParallelRegion.apply(input_)


def gather_from_sequence_parallel_region(input_: torch.Tensor,
                                         tensor_parallel_output_grad: bool = True) -> torch.Tensor:
    return _GatherFromSequenceParallelRegion.apply(input_, tensor_parallel_output_grad)


def reduce_scatter_to_sequence_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    return _ReduceScatterToSequenceParallelRegion.apply(input_)
