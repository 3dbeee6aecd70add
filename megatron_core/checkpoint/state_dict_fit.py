"""Whether saved weights fit a model, and if not, how: the keys and shapes a user can act on.

    load_fitting(chunk, saved["model"], f"{path}: model does not fit this model",
                 "use the model flags it was saved with.")
    # CheckpointError: ckpt/iter_0000003/mp_rank_00/model_optim_rng.pt: model does not fit this model:
    #   1 missing key (decoder.final_layernorm.bias), 2 unexpected (decoder.extra.weight, lm_head.weight),
    #   1 of another shape (embedding.word_embeddings.weight: saved [21249, 32], model [21248, 32]);
    #   use the model flags it was saved with.

torch's `load_state_dict(strict=True)` raises one RuntimeError of many lines whose first line
names only the class ("Error(s) in loading state_dict for GPTModel:"); cut to one line it
says nothing. Here the first few keys of each kind are named, with their counts, in the
model's order (the saved file's for unexpected keys), in one clause.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Tuple, Union

import torch

from ..errors import CheckpointError

SHOWN = 3          # keys named per kind; the count says how many there are
Shape = Union[Tuple[int, ...], str, None]   # a tensor's shape, "a <type>" for another value, None: not compared


def tensor_shapes(state: Mapping[str, object]) -> dict:
    """{key: shape} of a state dict (its tensors are not read, so a memory-mapped file stays unread)."""
    return {key: tuple(value.shape) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
            for key, value in state.items()}


def describe_mismatch(model: Mapping[str, Shape], saved: Mapping[str, Shape], shown: int = SHOWN) -> Optional[str]:
    """None when `saved` has exactly the model's keys with the same shapes; else one clause naming the first
    `shown` missing keys, unexpected keys and keys of another shape, each kind with its count."""
    missing = [key for key in model if key not in saved]
    unexpected = [key for key in saved if key not in model]
    reshaped = [f"{key}: saved {_shape_text(saved[key])}, model {_shape_text(model[key])}" for key in model
                if key in saved and None not in (model[key], saved[key]) and model[key] != saved[key]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({_first(missing, shown)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_first(unexpected, shown)})")
    if reshaped:
        parts.append(f"{len(reshaped)} of another shape ({_first(reshaped, shown)})")
    return ", ".join(parts) or None


def check_fits(model_state: Mapping[str, object], state: Mapping[str, object], does_not_fit: str, fix: str) -> None:
    """A `state` that does not fit `model_state` (a module's state dict) is one CheckpointError,
    "<does_not_fit>: <describe_mismatch>; <fix>"."""
    mismatch = describe_mismatch(tensor_shapes(model_state), tensor_shapes(state))
    if mismatch is not None:
        raise CheckpointError(f"{does_not_fit}: {mismatch}; {fix}")


def load_fitting(module: torch.nn.Module, state: Mapping[str, object], does_not_fit: str, fix: str) -> None:
    """module.load_state_dict(state, strict=True) after check_fits."""
    check_fits(module.state_dict(), state, does_not_fit, fix)
    module.load_state_dict(state, strict=True)


def _first(items: Iterable[str], shown: int) -> str:
    items = list(items)
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def _shape_text(shape: Shape) -> str:
    return f"[{', '.join(map(str, shape))}]" if isinstance(shape, tuple) else str(shape)
