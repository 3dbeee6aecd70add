"""Optimizer parameter groups: no weight decay on norms and biases; optional lr multipliers.

A parameter is exempt from weight decay when it is a vector or scalar (biases, norm gains,
ndim <= 1) or belongs to a normalization module (LayerNorm, RMSNorm, GroupNorm, ...), as in
Megatron (1-D parameters and biases). Matrices and embedding tables are decayed. Decided by
type and shape, never by parameter names, so renamed modules keep the rule.

Each group carries `wd_mult` (0 or 1) and `lr_mult`; the schedule writes
`lr * lr_mult` and `weight_decay * wd_mult` into the group (LearningRateSchedule.apply).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

# Module types whose parameters are never decayed, whatever their shape (nn.RMSNorm: torch >= 2.4).
NORM_TYPES: Tuple[type, ...] = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None),
                                                  nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) if t is not None)

LrMult = Callable[[str, nn.Parameter], float]


def is_decayed(module: nn.Module, param: nn.Parameter) -> bool:
    return param.ndim > 1 and not isinstance(module, NORM_TYPES)


def build_param_groups(models: Union[nn.Module, Sequence[nn.Module]], weight_decay: float = 0.0,
                       lr_mult: Optional[LrMult] = None) -> List[dict]:
    """Groups for `torch.optim` over one model or a list of model chunks.

    `lr_mult(name, param)` returns a learning-rate multiplier (default 1.0) for a parameter
    named as in `model.named_parameters()` (chunk i of a list is prefixed `i.`). Parameters
    that do not require grad are left out; a parameter reachable twice is listed once.
    """
    chunks = [models] if isinstance(models, nn.Module) else list(models)
    groups: Dict[Tuple[float, float], dict] = {}
    seen = set()
    for index, chunk in enumerate(chunks):
        prefix = f"{index}." if len(chunks) > 1 else ""
        for module_name, module in chunk.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                name = prefix + (f"{module_name}.{param_name}" if module_name else param_name)
                wd_mult = 1.0 if is_decayed(module, param) else 0.0
                mult = float(lr_mult(name, param)) if lr_mult is not None else 1.0
                group = groups.setdefault((wd_mult, mult), {
                    "params": [], "wd_mult": wd_mult, "lr_mult": mult, "weight_decay": weight_decay * wd_mult})
                group["params"].append(param)
    return list(groups.values())
