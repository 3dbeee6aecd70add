"""A whole state dict in which only one window of keys is real: the rest are meta tensors.

    window = MetaWindow(values, shapes, real={"decoder.layers.3.mlp.fc1.weight", ...})

The HF mappings convert whole state dicts. Handing them a MetaWindow lets export and import
stream one layer at a time: keys in `real` are read from `values` when asked for, every other
key is a meta tensor of its shape and dtype (no data), which the mapping's arithmetic passes
through at no cost, so only the window's outputs come back real.
"""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, Set, Tuple

import torch


class MetaWindow(Mapping):
    def __init__(self, values: Mapping, shapes: Dict[str, Tuple[tuple, torch.dtype]], real: Set[str]):
        self.values, self.shapes, self.real = values, shapes, real

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.real:
            return self.values[key]
        shape, dtype = self.shapes[key]
        return torch.empty(shape, dtype=dtype, device="meta")

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)
