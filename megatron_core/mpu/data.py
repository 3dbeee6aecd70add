"""Broadcast a batch from the first rank of each tensor-parallel group to the others.

Only one rank per TP group reads data; the others receive the same tensors, which
saves (tp - 1) data loaders per model replica.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from . import parallel_state as ps

_MAX_DIMS = 8


def _broadcast(tensor: torch.Tensor) -> None:
    dist.broadcast(tensor, ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group())


def broadcast_data(keys: List[str], data: Optional[Dict[str, torch.Tensor]], datatype: torch.dtype,
                   device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
    """Return {key: tensor} on every TP rank; `data` is only read on the TP source rank.

    All tensors must have `datatype` on the source rank. Shapes are sent first, so
    receivers need not know them.
    """
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    is_src = ps.get_tensor_model_parallel_rank() == 0
    sizes = torch.zeros(len(keys), _MAX_DIMS + 1, dtype=torch.long)
    if is_src:
        if data is None:
            raise ValueError("broadcast_data: the tensor-parallel source rank must pass the data dict.")
        for i, key in enumerate(keys):
            tensor = data[key]
            if tensor.dtype != datatype:
                raise TypeError(f"broadcast_data: '{key}' has dtype {tensor.dtype}, expected {datatype}.")
            if tensor.dim() > _MAX_DIMS:
                raise ValueError(f"broadcast_data: '{key}' has {tensor.dim()} dimensions; at most {_MAX_DIMS}.")
            sizes[i, 0] = tensor.dim()
            sizes[i, 1:1 + tensor.dim()] = torch.tensor(tensor.shape)
    sizes = sizes.to(device)
    _broadcast(sizes)
    sizes = sizes.cpu()
    shapes = [tuple(sizes[i, 1:1 + int(sizes[i, 0])].tolist()) for i in range(len(keys))]
    numels = [int(torch.tensor(shape).prod().item()) if shape else 1 for shape in shapes]
    if is_src:
        flat = torch.cat([data[key].contiguous().view(-1).to(device) for key in keys])
    else:
        flat = torch.empty(sum(numels), dtype=datatype, device=device)
    _broadcast(flat)
    out, offset = {}, 0
    for key, shape, numel in zip(keys, shapes, numels):
        out[key] = flat.narrow(0, offset, numel).view(shape)
        offset += numel
    return out
