"""Where the layers allocate their parameters: the accelerator (else the CPU), or a device a
caller picks for one build -- the meta device, to learn a model's keys, shapes and sharding
marks without its weights:

    with parameters_on(torch.device("meta")):
        model = GPTModel(config, vocab_size, max_sequence_length)    # no data, no random draws
    smap = model.sharding_map()

A meta parameter holds no data, so the initializers (init_methods.initialize_affine_weight,
the heads' replicated linears) mark it and draw nothing. Outside such a block nothing
changes: a normal build allocates, draws and consumes the generators exactly as before.
Blocks nest; the innermost device wins (transformer/meta_build.py uses that to make single
components real inside a meta build).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch

_CHOSEN: List[Optional[torch.device]] = []     # innermost last; None: the default device


def default_device() -> torch.device:
    if _CHOSEN and _CHOSEN[-1] is not None:
        return _CHOSEN[-1]
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def parameters_on(device: Optional[torch.device]) -> Iterator[None]:
    """Layers built inside allocate on `device` (None: the default device, e.g. to make one part
    of a meta build real)."""
    _CHOSEN.append(device)
    try:
        yield
    finally:
        _CHOSEN.pop()
