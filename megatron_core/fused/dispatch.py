"""Which implementation runs a fused op: our CUDA kernels, Apex's, or the torch fallback.

    choose(op, x, enabled)  ->  KERNEL  when enabled, x is on a GPU and
                                        megatron_core._fused_kernels imports;
                                APEX    when enabled, x is on a GPU, our extension is
                                        missing and Apex has this op;
                                TORCH   otherwise (the fallback; always on CPU).

`enabled` is TransformerConfig.fused_kernels (the --no-fused-kernels flag). Each op adds
its own applicability test (dtypes, shapes) and passes the result as `applicable`.
Imports are attempted once and remembered; `forget_imports()` makes the next call look
again (tests inject fake modules into sys.modules).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional

import torch

KERNEL, APEX, TORCH = "kernel", "apex", "torch"
EXTENSION_NAME = "megatron_core._fused_kernels"

_imported: Dict[str, Optional[ModuleType]] = {}


def optional_import(name: str) -> Optional[ModuleType]:
    """The module, or None when it (or something it needs) cannot be imported."""
    if name not in _imported:
        try:
            _imported[name] = importlib.import_module(name)
        except ImportError:
            _imported[name] = None
    return _imported[name]


def forget_imports() -> None:
    _imported.clear()


def extension() -> Optional[ModuleType]:
    """Our compiled kernels (built by setup.py), or None."""
    return optional_import(EXTENSION_NAME)


def is_cuda(x: torch.Tensor) -> bool:
    return x.is_cuda


def choose(x: torch.Tensor, enabled: bool, applicable: bool = True, apex_op=None) -> str:
    """KERNEL, APEX or TORCH for an op on `x`; `apex_op()` says whether Apex can run it."""
    if not (enabled and applicable and is_cuda(x)):
        return TORCH
    if extension() is not None:
        return KERNEL
    if apex_op is not None and apex_op():
        return APEX
    return TORCH


def kernels_available() -> bool:
    """True when our extension is built and importable (it still only runs on GPUs)."""
    return extension() is not None
