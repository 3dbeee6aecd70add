"""Tensor-parallel linear and embedding layers, Megatron's conventions.

ColumnParallelLinear  Y = X A + b, A split by columns: weight [output/tp, input]
RowParallelLinear     Y = X A + b, A split by rows:    weight [output, input/tp]
VocabParallelEmbedding  rows of the vocabulary split:  weight [vocab/tp, dim]
Linear layers return (output, bias_or_None): with skip_bias_add the bias is returned
unadded so the caller can fuse it into the next elementwise op.
Layers know nothing of models: they take sizes and an init method.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import parallel_state as ps
from .init_methods import (InitMethod, initialize_affine_weight, mark_vocab_parallel,
                           set_tensor_model_parallel_attributes, xavier_normal)
from .mappings import (copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region,
                       gather_from_tensor_model_parallel_region, reduce_from_tensor_model_parallel_region,
                       reduce_scatter_to_sequence_parallel_region, scatter_to_tensor_model_parallel_region)
from .parameter_device import default_device
from .utils import divide, vocab_range_for_rank


def _new_param(shape, dtype, device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device))


class ColumnParallelLinear(nn.Module):
    """Linear layer with its output features split across the tensor-parallel group.

    gather_output=False leaves the output split (feed it to a RowParallelLinear with
    input_is_parallel=True). With sequence_parallel the input arrives split along the
    sequence (dim 0) and is all-gathered; its gradient is reduce-scattered back.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True, gather_output: bool = True,
                 init_method: Optional[InitMethod] = None, stride: int = 1, skip_bias_add: bool = False,
                 params_dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                 skip_weight_param_allocation: bool = False, device: Optional[torch.device] = None,
                 fold_skipped_bias_off_gpu: bool = False):
        super().__init__()
        # With skip_bias_add the caller adds the bias (a fused GPU kernel); a caller whose CPU
        # fallback would add it in a pass of its own sets this, and off the GPU the matmul adds it
        # (addmm) and no bias is returned.
        self.fold_skipped_bias_off_gpu = fold_skipped_bias_off_gpu
        world = ps.get_tensor_model_parallel_world_size()
        if sequence_parallel and gather_output:
            raise ValueError("ColumnParallelLinear: sequence_parallel=True cannot be combined with gather_output=True.")
        self.input_size = input_size
        self.output_size = output_size
        self.output_size_per_partition = divide(output_size, world, "ColumnParallelLinear output_size")
        self.gather_output = gather_output
        self.skip_bias_add = skip_bias_add
        self.sequence_parallel = sequence_parallel and world > 1
        device = device or default_device()
        if skip_weight_param_allocation:
            # The weight comes from elsewhere at forward time (tied output embedding).
            self.register_parameter("weight", None)
        else:
            self.weight = _new_param((self.output_size_per_partition, input_size), params_dtype, device)
            initialize_affine_weight(self.weight, (output_size, input_size), 0, init_method or xavier_normal, stride)
        if bias:
            self.bias = _new_param((self.output_size_per_partition,), params_dtype, device)
            set_tensor_model_parallel_attributes(self.bias, True, 0, stride)
            with torch.no_grad():
                self.bias.zero_()
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if weight is None:
            if self.weight is None:
                raise RuntimeError("ColumnParallelLinear was built without a weight; pass weight= to forward.")
            weight = self.weight
        if self.sequence_parallel:
            input_parallel = gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True)
        else:
            input_parallel = copy_to_tensor_model_parallel_region(input_)
        fold = (self.skip_bias_add and self.fold_skipped_bias_off_gpu and self.bias is not None
                and not input_parallel.is_cuda)
        bias = self.bias if not self.skip_bias_add or fold else None
        output_parallel = F.linear(input_parallel, weight, bias)
        output = gather_from_tensor_model_parallel_region(output_parallel) if self.gather_output else output_parallel
        return output, (self.bias if self.skip_bias_add and not fold else None)

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, output_size={self.output_size} "
                f"(per partition {self.output_size_per_partition}), bias={self.bias is not None}, "
                f"gather_output={self.gather_output}, sequence_parallel={self.sequence_parallel}")


class RowParallelLinear(nn.Module):
    """Linear layer with its input features split across the tensor-parallel group.

    The partial products are summed with an all-reduce, or reduce-scattered along the
    sequence with sequence_parallel. The bias is added once, after the reduction.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True, input_is_parallel: bool = False,
                 init_method: Optional[InitMethod] = None, stride: int = 1, skip_bias_add: bool = False,
                 params_dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                 device: Optional[torch.device] = None, fold_skipped_bias_off_gpu: bool = False):
        super().__init__()
        world = ps.get_tensor_model_parallel_world_size()
        # As ColumnParallelLinear's, where nothing is reduced after the matmul (one rank).
        self.fold_skipped_bias_off_gpu = fold_skipped_bias_off_gpu and world == 1
        if sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear: sequence_parallel=True needs input_is_parallel=True.")
        self.input_size = input_size
        self.output_size = output_size
        self.input_size_per_partition = divide(input_size, world, "RowParallelLinear input_size")
        self.input_is_parallel = input_is_parallel
        self.skip_bias_add = skip_bias_add
        self.sequence_parallel = sequence_parallel and world > 1
        device = device or default_device()
        self.weight = _new_param((output_size, self.input_size_per_partition), params_dtype, device)
        initialize_affine_weight(self.weight, (output_size, input_size), 1, init_method or xavier_normal, stride)
        if bias:
            self.bias = _new_param((output_size,), params_dtype, device)
            # Replicated on every TP rank; with sequence parallelism each rank sees only its
            # sequence chunk, so the bias gradient must be all-reduced over the TP group.
            self.bias.sequence_parallel = self.sequence_parallel
            with torch.no_grad():
                self.bias.zero_()
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        input_parallel = input_ if self.input_is_parallel else scatter_to_tensor_model_parallel_region(input_)
        if self.skip_bias_add and self.fold_skipped_bias_off_gpu and self.bias is not None \
                and not input_parallel.is_cuda:
            return F.linear(input_parallel, self.weight, self.bias), None
        output_parallel = F.linear(input_parallel, self.weight)
        if self.sequence_parallel:
            output = reduce_scatter_to_sequence_parallel_region(output_parallel)
        else:
            output = reduce_from_tensor_model_parallel_region(output_parallel)
        if self.skip_bias_add or self.bias is None:
            return output, self.bias
        return output + self.bias, None

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size} (per partition {self.input_size_per_partition}), "
                f"output_size={self.output_size}, bias={self.bias is not None}, "
                f"input_is_parallel={self.input_is_parallel}, sequence_parallel={self.sequence_parallel}")


class VocabParallelEmbedding(nn.Module):
    """Embedding table with its rows (the vocabulary) split across the tensor-parallel group.

    Each rank looks up the ids it owns, zeroes the rest, and the partial results are
    summed over the group. With reduce_scatter_embeddings the input is [batch, seq] and the
    output is returned sequence-first and split along the sequence, [seq/tp, batch, dim],
    ready for a sequence-parallel transformer.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, init_method: Optional[InitMethod] = None,
                 params_dtype: torch.dtype = torch.float32, reduce_scatter_embeddings: bool = False,
                 device: Optional[torch.device] = None):
        super().__init__()
        world = ps.get_tensor_model_parallel_world_size()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.reduce_scatter_embeddings = reduce_scatter_embeddings
        self.vocab_start_index, self.vocab_end_index = vocab_range_for_rank(
            num_embeddings, ps.get_tensor_model_parallel_rank(), world)
        self.num_embeddings_per_partition = self.vocab_end_index - self.vocab_start_index
        self.weight = _new_param((self.num_embeddings_per_partition, embedding_dim), params_dtype,
                                 device or default_device())
        initialize_affine_weight(self.weight, (num_embeddings, embedding_dim), 0, init_method or xavier_normal, 1)
        mark_vocab_parallel(self.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        world = ps.get_tensor_model_parallel_world_size()
        if world > 1:
            outside = (input_ids < self.vocab_start_index) | (input_ids >= self.vocab_end_index)
            local_ids = (input_ids - self.vocab_start_index).masked_fill(outside, 0)
        else:
            local_ids = input_ids
        output_parallel = F.embedding(local_ids, self.weight)
        if world > 1:
            output_parallel = output_parallel.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.reduce_scatter_embeddings:
            return reduce_scatter_to_sequence_parallel_region(output_parallel.transpose(0, 1).contiguous())
        return reduce_from_tensor_model_parallel_region(output_parallel)

    def extra_repr(self) -> str:
        return (f"num_embeddings={self.num_embeddings} (rows {self.vocab_start_index}.."
                f"{self.vocab_end_index - 1} here), embedding_dim={self.embedding_dim}")
