"""Moving a model's parameters off their initialization, so weight-mapping tests can fail."""
from __future__ import annotations

import torch


def randomize_trainable(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every trainable parameter off its init (HF zeroes biases, sets norms to 1), in
    name order from one generator; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()
