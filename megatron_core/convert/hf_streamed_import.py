"""Our whole model's weights from an HF state dict, made one window at a time.

    ours = StreamedImport(mapping, spec, hf_weights)     # a Mapping: our key -> tensor
    ours["decoder.layers.3.mlp.dense_h_to_4h.weight"]    # converts HF layer 3 only

The family's mapping converts whole state dicts (`state_dict_from_hf`). Here it is run on
windows of the HF weights -- the keys outside the layers, or one layer of one stack -- with
every key outside the window a meta tensor (shape and dtype only, no data), so its
arithmetic costs nothing there and only the window's outputs are real. Our layer i of a
stack comes from HF layer i of the matching stack (encoder with encoder); a key found
elsewhere (T5's relative-bias table, which HF keeps in block 0) is looked for in the other
windows. The last window's outputs are kept, so reading our keys in state-dict order
converts each HF layer about once; memory holds one window, never the model.
"""
from __future__ import annotations

import re
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from ..errors import ConversionError
from .meta_window import MetaWindow

_HF_LAYER = re.compile(r"^(.*?\b(?:h|layers|layer|block))\.(\d+)\.")
_OUR_LAYER = re.compile(r"^(.*layers)\.(\d+)\.")


def _stacks(keys, pattern) -> List[str]:
    names = {m.group(1) for m in map(pattern.match, keys) if m}
    return sorted(names, key=lambda name: ("decoder" in name, name))    # an encoder first


def _shapes(weights: Mapping) -> Dict[str, Tuple[tuple, torch.dtype]]:
    if hasattr(weights, "shape_and_dtype"):
        return {key: weights.shape_and_dtype(key) for key in weights}
    return {key: (tuple(value.shape), value.dtype) for key, value in weights.items()}


class StreamedImport(Mapping):
    def __init__(self, mapping, spec, weights: Mapping):
        self.mapping, self.spec, self.weights = mapping, spec, weights
        self.shapes = _shapes(weights)
        windows: Dict[Optional[Tuple[str, int]], set] = {}
        for key in self.shapes:
            match = _HF_LAYER.match(key)
            windows.setdefault((match.group(1), int(match.group(2))) if match else None, set()).add(key)
        self.windows = windows
        planned = self._convert(set())
        self._meta = {key: (tuple(v.shape), v.dtype) for key, v in planned.items()}
        ours, theirs = _stacks(self._meta, _OUR_LAYER), _stacks(self.shapes, _HF_LAYER)
        self.stack_of = dict(zip(ours, theirs)) if len(ours) == len(theirs) else {}
        self._cached: Tuple[object, Dict[str, torch.Tensor]] = (object(), {})

    def _convert(self, real) -> Dict[str, torch.Tensor]:
        return self.mapping.state_dict_from_hf(MetaWindow(self.weights, self.shapes, real), self.spec)

    def _window_outputs(self, window) -> Dict[str, torch.Tensor]:
        if self._cached[0] != window:
            self._cached = (object(), {})      # let the last window's outputs go before making the next
            converted = self._convert(self.windows.get(window, set()))
            self._cached = (window, {k: v for k, v in converted.items() if not v.is_meta})
        return self._cached[1]

    def _home(self, key: str):
        match = _OUR_LAYER.match(key)
        if match is None:
            return None
        stack = self.stack_of.get(match.group(1))
        return (stack, int(match.group(2))) if stack is not None else None

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._meta:
            raise KeyError(key)
        home = self._home(key)
        for window in [home] + [w for w in self.windows if w != home]:
            if key in self._window_outputs(window):
                return self._window_outputs(window)[key]
        raise ConversionError(f"our {key!r} depends on more than one layer of the HF weights; the import cannot "
                              f"stream it, please report it.")

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)
