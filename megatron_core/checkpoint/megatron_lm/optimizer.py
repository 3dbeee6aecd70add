"""Megatron-LM's optimizer state in a `torch`-format rank file, both ways.

Megatron-LM's optimizer (get_megatron_optimizer, fp32 or mixed precision, not distributed)
saves torch's Adam state dict: positions numbered through the parameter groups in order, each
group holding its parameters in the model's named_parameters order. Its default groups are
the decayed parameters (wd_mult 1.0) and the others (biases and 1-D tensors: wd_mult 0.0). A
bf16/fp16 run wraps it: {"optimizer": torch's state dict, "fp32_from_fp16_params": [[the fp32
masters of each group, in order]]}. Ours keeps the same fields per parameter
(contents.PER_PARAMETER: {chunk: {name: {exp_avg, exp_avg_sq, step, fp32_master}}}).

  per_parameter_state   a Megatron-LM file's positional state -> ours per parameter (reading)
  megatron_optimizer    ours per parameter -> Megatron-LM's positional state (writing), in
                        the order the caller gives: the model's named_parameters order of the
                        file's key names (parameter_order.py)
  megatron_param_groups the groups' fields, also what torch_dist's common.pt keeps of them
  torch_dist_common_optimizer  common.pt's optimizer entry (the moments are tensors there)
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch

from ...errors import CheckpointError


def _decayed(name: str, tensor: torch.Tensor) -> bool:
    """Megatron-LM's default: no weight decay for biases and 1-D tensors (norms)."""
    return not (name.endswith(".bias") or tensor.dim() == 1)


def per_parameter_state(saved: Mapping, parameters: List[Tuple[str, str, torch.Tensor]], where: str) -> Dict:
    """Megatron-LM's optimizer state of one rank as ours, {chunk: {our key: {field: tensor}}};
    `parameters`: (chunk, our key, weight) in the model's named_parameters order
    (parameter_order.py). Anything but the default two groups, or shapes that do not line up,
    is one sentence: load with --no-load-optim or --finetune."""
    inner = saved.get("optimizer") if isinstance(saved.get("optimizer"), Mapping) else saved
    masters = saved.get("fp32_from_fp16_params")
    refuse = (f"{where}: the Megatron-LM optimizer state does not line up with the model's parameters "
              f"({{}}); load the weights alone with --no-load-optim (or --finetune).")
    if not isinstance(inner, Mapping) or "state" not in inner or "param_groups" not in inner:
        raise CheckpointError(refuse.format("not a torch optimizer's state dict"))
    pending = {True: [p for p in parameters if _decayed(p[1], p[2])],
               False: [p for p in parameters if not _decayed(p[1], p[2])]}
    out: Dict[str, Dict] = {}
    for g, group in enumerate(inner["param_groups"]):
        wd = group.get("wd_mult", 1.0 if group.get("weight_decay", 0.0) else 0.0)
        members = pending.get(bool(wd))
        if members is None or len(members) != len(group["params"]):
            raise CheckpointError(refuse.format(f"group {g} has {len(group['params'])} parameters"))
        pending[bool(wd)] = None
        for i, (position, (chunk, ours, weight)) in enumerate(zip(group["params"], members)):
            fields = dict(inner["state"].get(position, {}))
            for field, value in fields.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != weight.shape:
                    raise CheckpointError(refuse.format(f"{field} of position {position} has shape "
                                                        f"{tuple(value.shape)}, {ours} {tuple(weight.shape)}"))
            if masters is not None:
                fields["fp32_master"] = masters[g][i]
            out.setdefault(chunk, {})[ours] = fields
    left = [name for members in pending.values() if members for _, name, _ in members]
    if left:
        raise CheckpointError(refuse.format(f"no group holds {left[0]}"))
    return out


def adam_hyperparameters(flags: Mapping) -> Dict:
    """The `hyper` of megatron_param_groups from Megatron-LM's flag names (a run's optimizer
    config, or a checkpoint's args record), Megatron-LM's defaults where one is absent."""
    def value(name, default):
        return float(flags.get(name) if flags.get(name) is not None else default)
    return {"lr": value("lr", 0.0), "min_lr": value("min_lr", 0.0), "weight_decay": value("weight_decay", 0.01),
            "betas": (value("adam_beta1", 0.9), value("adam_beta2", 0.999)), "eps": value("adam_eps", 1e-8)}


def megatron_param_groups(hyper: Mapping) -> List[Dict]:
    """Megatron-LM's two parameter groups (decayed, then the others) without their `params`,
    with every field its groups hold, since torch's load_state_dict takes them over. `hyper`:
    lr, min_lr, weight_decay, betas, eps (the run's flags)."""
    template = torch.optim.Adam([torch.zeros(1)], lr=hyper["lr"], betas=tuple(hyper["betas"]), eps=hyper["eps"],
                                weight_decay=hyper["weight_decay"]).state_dict()["param_groups"][0]
    template = {k: v for k, v in template.items() if k != "params"}
    template.update(lr_mult=1.0, is_expert_parallel=False, is_decoupled_lr=False, default_config=True,
                    max_lr=hyper["lr"], min_lr=hyper["min_lr"], decoupled_weight_decay=True)
    return [dict(template, wd_mult=1.0, weight_decay=hyper["weight_decay"]),
            dict(template, wd_mult=0.0, weight_decay=0.0)]


def megatron_optimizer(parameters: List[Tuple[str, torch.Tensor, Mapping]], hyper: Mapping,
                       mixed_precision: bool) -> Dict:
    """Megatron-LM's optimizer entry of one rank file. `parameters`: (Megatron-LM name, weight,
    our per-parameter fields) in the model's named_parameters order (parameter_order.py: megatron-core's
    or the legacy model's, as the file's names are); `hyper`: as megatron_param_groups."""
    templates = megatron_param_groups(hyper)
    groups, state, masters = [], {}, []
    position = 0
    for template, decayed in zip(templates, (True, False)):
        members = [(name, weight, fields) for name, weight, fields in parameters if _decayed(name, weight) == decayed]
        positions = list(range(position, position + len(members)))
        for at, (name, weight, fields) in zip(positions, members):
            state[at] = {field: value for field, value in fields.items() if field != "fp32_master"}
        masters.append([fields.get("fp32_master", weight.float()).reshape(weight.shape).float()
                        for _, weight, fields in members])
        groups.append(dict(template, params=positions))
        position += len(members)
    inner = {"state": state, "param_groups": groups}
    return {"optimizer": inner, "fp32_from_fp16_params": masters} if mixed_precision else inner


def torch_dist_common_optimizer(step, hyper: Mapping, mixed_precision: bool) -> Dict:
    """What torch_dist's common.pt keeps of Megatron-LM's optimizer: Adam's step once and the
    groups' fields (their parameters are the loading run's own); a mixed-precision optimizer
    nests it under "optimizer". The moments are tensors `optimizer.state.<field>.<name>`."""
    inner = {"state": {"common_step": torch.as_tensor(step, dtype=torch.float32).clone()},
             "param_groups": megatron_param_groups(hyper)}
    return {"optimizer": inner} if mixed_precision else inner

