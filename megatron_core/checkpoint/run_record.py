"""The run's flags as a checkpoint stores them: a dict of plain values, never a Namespace.

Megatron-LM pickles its argparse Namespace into every checkpoint, which only a full
unpickler reads. Here every flag whose value is a str, int, float, bool, None, or a
list/tuple of those is kept; a torch.dtype becomes its name ("float16"); objects built
from the flags (the tokenizer) are left out.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any):
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
        return list(value)
    raise TypeError


def args_to_dict(args) -> Dict[str, Any]:
    record = {}
    for name, value in sorted(vars(args).items()):
        try:
            record[name] = _plain(value)
        except TypeError:
            continue
    return record
