"""Moving a model's parameters off their initialization, so weight-mapping tests can fail."""
from __future__ import annotations

import zlib

import torch

from .model_checks import full_shape, local_shard


def randomize_trainable(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every trainable parameter off its init (HF zeroes biases, sets norms to 1), in
    name order from one generator; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb_by_name(model: torch.nn.Module) -> None:
    """Overwrite every parameter with a deterministic function of its name and full shape."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            full = torch.randn(full_shape(param), generator=seeded_generator(zlib.crc32(name.encode()))) * 0.3
            if "norm" in name and name.endswith("weight"):
                full += 1.0
            param.copy_(local_shard(param, full))
