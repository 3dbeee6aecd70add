"""A model's keys without its weights, and a few of its tensors with exactly the weights a
normal build gives them, without building the rest.

    with serial_world():
        keys = meta_state_dict(build).keys()                   # every tensor on the meta device
        heads = materialize(build, ["lm_head.dense.weight"])   # {key: tensor}, real

Each component (the word table, layer i, a head: init.component_rng) draws from its own seed,
so a component built alone gets the weights a whole build gives it. `materialize` builds the
model twice, both times without the weights of the other components: first all on meta,
noting which component allocated each tensor (a parameter/buffer registration hook), then
with the components that hold the wanted keys real and every other component on meta.
Tensors allocated outside any component (norm weights, zero biases: vector-sized, drawn from
no component seed) are real in that second build, as they are in a normal one.
Outside these calls component_rng does nothing new, so normal builds are unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from ..mpu.parameter_device import parameters_on

META = torch.device("meta")
Component = Tuple[str, int]


class _Build:
    """The state of one meta or selective build: which components are real, which are open."""

    def __init__(self, real: Optional[set] = None, record: bool = False):
        self.real = real                # None: every component on meta
        self.open: List[Component] = []
        self.owner: Optional[Dict[int, Optional[Component]]] = {} if record else None

    def note(self, tensor) -> None:
        if self.owner is not None and tensor is not None and id(tensor) not in self.owner:
            self.owner[id(tensor)] = self.open[-1] if self.open else None   # first registration wins


_ACTIVE: List[_Build] = []


@contextlib.contextmanager
def component_scope(name: str, index: int) -> Iterator[None]:
    """Entered by component_rng: inside a meta or selective build, put this component on its device."""
    if not _ACTIVE:
        yield
        return
    build = _ACTIVE[-1]
    build.open.append((name, index))
    real = build.real is not None and (name, index) in build.real
    try:
        with parameters_on(None if real else META):
            yield
    finally:
        build.open.pop()


@contextlib.contextmanager
def _building(build: _Build, outside: Optional[torch.device]) -> Iterator[None]:
    hooks = []
    if build.owner is not None:
        hooks = [nn_module.register_module_parameter_registration_hook(lambda m, n, t: build.note(t)),
                 nn_module.register_module_buffer_registration_hook(lambda m, n, t: build.note(t))]
    _ACTIVE.append(build)
    try:
        with parameters_on(outside):
            yield
    finally:
        _ACTIVE.pop()
        for hook in hooks:
            hook.remove()


def meta_state_dict(build_model: Callable[[], nn.Module]) -> Dict[str, torch.Tensor]:
    """The model's state dict with every tensor on the meta device (shapes, dtypes, marks)."""
    with _building(_Build(), META):
        return build_model().state_dict(keep_vars=True)


def materialize(build_model: Callable[[], nn.Module], keys: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The tensors `keys` of the model, with the values a normal build gives them (see above)."""
    keys = list(keys)
    if not keys:
        return {}
    planning = _Build(record=True)
    with _building(planning, META):
        state = build_model().state_dict(keep_vars=True)
    real = {planning.owner.get(id(state[key])) for key in keys} - {None}
    with _building(_Build(real=real), None):
        state = build_model().state_dict()
    tensors = {key: state[key].detach().clone() for key in keys}
    still_meta = [key for key, tensor in tensors.items() if tensor.is_meta]
    if still_meta:
        raise RuntimeError(f"{still_meta[:3]} stayed on the meta device in a selective build; a layer allocates "
                           f"them on its own device instead of mpu.parameter_device.default_device().")
    return tensors
