"""Build the optimizer named by OptimizerConfig over prepared parameter groups.

"adam" is Adam with decoupled weight decay (AdamW), as in Megatron: Apex's FusedAdam when
`apex.optimizers` imports and the parameters live on CUDA, else torch.optim.AdamW with its
fused kernel on CUDA (foreach elsewhere). "sgd" is torch.optim.SGD with --sgd-momentum.
The learning rate and weight decay of each group are set by the schedule before every
step (LearningRateSchedule.apply); the values given here are only the starting point.
"""
from __future__ import annotations

from typing import List

import torch

from ..errors import ConfigError
from .config import OptimizerConfig

OPTIMIZERS = ("adam", "sgd")


def _fused_adam_class():
    try:
        from apex.optimizers import FusedAdam  # type: ignore
    except Exception:  # apex absent or built without its CUDA extensions
        return None
    return FusedAdam


def build_optimizer(param_groups: List[dict], config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {config.optimizer} is not one of {', '.join(OPTIMIZERS)}.")
    params = [p for group in param_groups for p in group["params"]]
    if not params:
        raise ConfigError("the model has no trainable parameters to optimize.")
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, weight_decay=config.weight_decay,
                               momentum=config.sgd_momentum)
    betas = (config.adam_beta1, config.adam_beta2)
    on_cuda = all(p.is_cuda for p in params)
    fused_adam = _fused_adam_class() if on_cuda else None
    if fused_adam is not None:
        return fused_adam(param_groups, lr=config.lr, weight_decay=config.weight_decay, betas=betas,
                          eps=config.adam_eps, adam_w_mode=True)
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay, betas=betas,
                             eps=config.adam_eps, **kernel)
