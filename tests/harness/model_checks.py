"""Helpers the model tests share: a one-process gloo world, moving parameters off their
init, and going between a parameter's full (serial) shape and its tensor-parallel shard.
"""
from __future__ import annotations

import datetime
from contextlib import contextmanager
from typing import Dict, List

import torch
import torch.distributed as dist

from megatron_core import mpu
from megatron_core.mpu.init_methods import param_is_tensor_parallel
from megatron_core.mpu.layout import merge_shards, shard_tensor
from tests.harness import find_free_port


@contextmanager
def single_process_world():
    """A world of one gloo process in this pytest process with TP=1 model-parallel groups;
    a process group already set up is reused and left in place. Torn down also when the
    body fails, so one failing test does not fail the next ones of the process."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
    try:
        mpu.initialize_model_parallel(1)
        yield
    finally:
        mpu.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


def full_shape(param: torch.Tensor) -> List[int]:
    """The serial shape of a (possibly tensor-parallel) parameter."""
    shape = list(param.shape)
    if param_is_tensor_parallel(param):
        shape[param.partition_dim] *= mpu.get_tensor_model_parallel_world_size()
    return shape


def local_shard(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This rank's shard of `full`, split as `param` is (the whole of it if not parallel)."""
    if not param_is_tensor_parallel(param):
        return full
    return shard_tensor(full, param.partition_dim, mpu.get_tensor_model_parallel_rank(),
                        mpu.get_tensor_model_parallel_world_size(), param.partition_stride)


def gathered_grads(model: torch.nn.Module, tp: int) -> Dict[str, torch.Tensor]:
    """Every parameter's gradient at its serial shape: tensor-parallel shards all-gathered
    over the TP group and merged as the layers split them (layout.merge_shards)."""
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad
        if getattr(p, "tensor_model_parallel", False) and tp > 1:
            parts = [torch.empty_like(grad) for _ in range(tp)]
            dist.all_gather(parts, grad.contiguous(), group=mpu.get_tensor_model_parallel_group())
            grad = merge_shards(parts, p.partition_dim, getattr(p, "partition_stride", 1))
        grads[name] = grad
    return grads
