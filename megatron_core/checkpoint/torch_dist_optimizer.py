"""The optimizer's state in a `--ckpt-format torch_dist` save, as megatron-core keeps it.

    states = whole_parameter_states(contents, distributed)   # every data-parallel rank calls
    local.update(optimizer_tensors(contents, states, layout, tp_rank, tp))   # data-parallel rank 0
    common["optimizer"] = common_optimizer(states, hyper, mixed_precision, layout)

Megatron-LM builds the optimizer part of the state dict it loads from its own optimizer (and,
for the distributed one, from the sharding type the checkpoint's content metadata names), so
the layout follows the run's optimizer:

  PLAIN         the plain optimizer (get_megatron_optimizer without --use-distributed-optimizer):
                optimizer.state.{exp_avg,exp_avg_sq,fp32_param}.<key> (fp32_param: the fp32 masters
                of a bf16/fp16 model); common.pt: {"state": {"common_step"}, "param_groups"},
                nested under "optimizer" in mixed precision.
  RESHARDABLE   --use-distributed-optimizer, megatron-core's `fully_reshardable` sharding type
                (Megatron-LM's --dist-ckpt-optim-fully-reshardable, which loads at any TP x PP x DP):
                optimizer.state.{param,exp_avg,exp_avg_sq}.<key> (param: the fp32 main copy,
                always); common.pt: {"optimizer": {"param_groups", each with Adam's step},
                "param_state_sharding_type": "fully_reshardable"}; content_metadata's
                distrib_optim_sharding_type says the same.

Both are model-space: each field one tensor of its parameter's shape, cut over tensor-parallel
ranks as the weight is. The distributed optimizer spreads each parameter's elements over the
data-parallel ranks; they are joined on data-parallel rank 0 by a sum over the group, one
parameter and field at a time (every other rank adds zeros where it holds nothing, so the sum is
exact), as megatron-core gathers them for this sharding type.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from .. import mpu
from ..errors import CheckpointError
from ..mpu.sharding_map import ShardingMap, ShardSpec
from .megatron_lm.key_names import mcore_names
from .megatron_lm.optimizer import megatron_param_groups, torch_dist_common_optimizer
from .megatron_lm.torch_dist import OPTIMIZER_STATE, Shard
from .model_record import FAMILY_KEY

PLAIN, RESHARDABLE = "plain", "fully_reshardable"
# our per-parameter field -> its name after `optimizer.state.`, by layout
SAVED_AS = {PLAIN: {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "fp32_master": "fp32_param"},
            RESHARDABLE: {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "fp32_master": "param"}}

ParameterKey = Tuple[str, str]      # (chunk key, parameter name)


def layout_for(distributed_optimizer: bool) -> str:
    return RESHARDABLE if distributed_optimizer else PLAIN


def content_metadata(layout: str) -> dict:
    """common.pt's content_metadata: what Megatron-LM's load builds its state dict from."""
    metadata = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if layout == RESHARDABLE:
        metadata["distrib_optim_sharding_type"] = RESHARDABLE
    return metadata


def shard_of(tensor: torch.Tensor, spec: ShardSpec, tensor_rank: int, tensor_size: int, key: str):
    """This rank's `tensor` as torch_dist's slice of the whole tensor (a plain tensor: replicated)."""
    if spec.replicated:
        return tensor
    if spec.stride not in (1, 2):
        raise CheckpointError(f"{key} is split with stride {spec.stride}, which torch_dist cannot describe (it "
                              f"stores stride 2 only, as SwiGLU's [gate; up]); save with --ckpt-format megatron.")
    return Shard.of_rank(tensor, spec.split_dim, tensor_rank, tensor_size, gated=spec.stride == 2)


def _pieces(saved: Mapping) -> Tuple[Dict[ParameterKey, List[Tuple[int, int, Dict]]], Optional[float]]:
    """({(chunk, name): [(first, end, {field: flat elements})]}, Adam's step) of this rank's
    backend state (its "params" name each position's parameter and element range)."""
    positions, masters, copied = saved["optimizer"]["state"], saved.get("fp32_master_weights") or [], 0
    pieces: Dict[ParameterKey, List[Tuple[int, int, Dict]]] = {}
    step = None
    for position, (chunk, name, first, end, has_master) in enumerate(saved["params"]):
        held = positions.get(position, {})
        fields = {f: v.reshape(-1) for f, v in held.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
        if has_master:
            fields["fp32_master"] = masters[copied].reshape(-1)
            copied += 1
        if "step" in held:
            step = float(held["step"])
        pieces.setdefault((chunk, name), []).append((first, end, fields))
    return pieces, step


def whole_parameter_states(contents: Mapping, distributed: bool) -> Tuple[Dict[ParameterKey, Dict], float]:
    """({(chunk, name): {field: tensor of the parameter's shape}}, Adam's step) of this (TP, PP)
    rank. `distributed`: the state is spread over the data-parallel group, which every rank of
    it calls for; the fields come back on data-parallel rank 0 (the others get {})."""
    pieces, step = _pieces(contents["optimizer"])
    if not distributed:
        states = {}
        for (chunk, name), held in pieces.items():
            weight = contents[chunk][name]
            (first, end, fields), = held
            if (first, end) != (0, weight.numel()):
                raise CheckpointError(f"the optimizer state of {name} covers elements {first}..{end} of "
                                      f"{weight.numel()}; a plain optimizer holds whole parameters.")
            states[(chunk, name)] = {f: v.reshape(weight.shape) for f, v in fields.items()}
        return states, step or 0.0
    group = mpu.get_data_parallel_group()
    # what each parameter holds (fields, dtypes) anywhere in the group, and the step
    mine = {key: {f: str(v.dtype) for _, _, fields in held for f, v in fields.items()} for key, held in pieces.items()}
    everyone: List = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, (mine, step), group=group)
    held_fields: Dict[ParameterKey, Dict[str, str]] = {}
    for theirs, _ in everyone:
        for key, fields in theirs.items():
            held_fields.setdefault(key, {}).update(fields)
    steps = {s for _, s in everyone if s is not None}
    if len(steps) > 1:
        raise CheckpointError(f"the data-parallel ranks hold Adam's step as {sorted(steps)}; they must agree.")
    order = [(chunk, name) for chunk in contents.get("sharding_map") or {} for name in contents[chunk]
             if (chunk, name) in held_fields]
    root = dist.get_global_rank(group, 0)
    states: Dict[ParameterKey, Dict] = {}
    for key in order:
        weight = contents[key[0]][key[1]]
        for field, dtype in sorted(held_fields[key].items()):
            whole = torch.zeros(weight.numel(), dtype=getattr(torch, dtype.replace("torch.", "")),
                                device=weight.device)
            for first, end, fields in pieces.get(key, ()):
                whole[first:end] = fields[field]
            dist.reduce(whole, root, group=group)
            if dist.get_rank() == root:
                states.setdefault(key, {})[field] = whole.view(weight.shape)
    return states, steps.pop() if steps else 0.0


def optimizer_tensors(contents: Mapping, states: Mapping[ParameterKey, Mapping], layout: str, tensor_rank: int,
                      tensor_size: int) -> Dict[str, object]:
    """{`optimizer.state.<field>.<megatron-core key>`: this rank's Shard} of `states` (a T5's
    parameters under both their names: key_names.mcore_names). A stage's copy of another stage's
    parameter (the tied output table) is written by its owner."""
    maps = {key: ShardingMap.from_dict(value) for key, value in (contents.get("sharding_map") or {}).items()}
    family = contents.get(FAMILY_KEY)
    out: Dict[str, object] = {}
    for (chunk, name), fields in states.items():
        spec = maps[chunk][name]
        if spec.copy_of is not None:
            continue
        fields = dict(fields)
        if layout == RESHARDABLE and "fp32_master" not in fields:     # the main copy of an fp32 model: its weights
            fields["fp32_master"] = contents[chunk][name].float()
        keys = mcore_names(maps[chunk].global_key(name), family)
        for field, saved_as in SAVED_AS[layout].items():
            if field in fields:
                shard = shard_of(fields[field], spec, tensor_rank, tensor_size, name)
                out.update({f"{OPTIMIZER_STATE}{saved_as}.{key}": shard for key in keys})
    return out


def common_optimizer(step: float, hyper: Mapping, mixed_precision: bool, layout: str) -> dict:
    """common.pt's optimizer entry (Adam's step and the groups' fields; the elements are tensors)."""
    if layout == PLAIN:
        return torch_dist_common_optimizer(step, hyper, mixed_precision)
    groups = [dict(group, step=float(step)) for group in megatron_param_groups(hyper)]
    return {"optimizer": {"param_groups": groups}, "param_state_sharding_type": RESHARDABLE}


__all__ = ["PLAIN", "RESHARDABLE", "SAVED_AS", "layout_for", "content_metadata", "shard_of",
           "whole_parameter_states", "optimizer_tensors", "common_optimizer"]
