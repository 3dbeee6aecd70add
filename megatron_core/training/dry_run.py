"""--dry-run: parse, validate, print the parameter count and memory estimate, exit.

A dry run starts no process group and builds no weights, so one process can check the
flags of a layout meant for 64 ranks. The world size it validates against is, in order:
--dry-run-world-size N; the launcher's WORLD_SIZE (or mpirun's OMPI_COMM_WORLD_SIZE) when
set; else TP x PP (data-parallel size 1). The scripts in scripts/ pass the slots of their
hostfile.

The vocabulary both a dry run and a real run start from is vocabulary.py's. Neither
writes into `args`: what they work out is handed on as values.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from ..errors import ConfigError
from .config import RunConfig
from .initialize import launcher_world_size
from .memory_estimate import estimate_memory, format_estimate
from .vocabulary import Vocabulary, resolve_vocabulary


def intended_world_size(args) -> int:
    """The world size a run validates against (see the module docstring for a dry run's)."""
    if not getattr(args, "dry_run", False):
        return launcher_world_size()
    if args.dry_run_world_size is not None:
        if args.dry_run_world_size < 1:
            raise ConfigError(f"--dry-run-world-size must be a positive integer, got {args.dry_run_world_size}.")
        return args.dry_run_world_size
    # Only the size matters: a dry run starts no rendezvous, so the rest of the launcher
    # environment (RANK, MASTER_ADDR, ...) need not be there.
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            value = os.environ[name]
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{name}={value!r} is not a positive integer; set it to the number of "
                                  f"processes, or give --dry-run-world-size N.")
            return int(value)
    return args.tensor_model_parallel_size * args.pipeline_model_parallel_size


def estimate_block(model_shape: Optional[Callable], vocabulary: Vocabulary, run: RunConfig) -> Optional[str]:
    """The parameter and memory block of the entry point's model (None without a shape provider
    or a vocabulary). model_shape(vocabulary) -> ModelShape."""
    if model_shape is None or vocabulary.padded_size is None:
        return None
    return format_estimate(estimate_memory(model_shape(vocabulary), run), run)


def dry_run(model_shape: Optional[Callable], args, run: RunConfig) -> None:
    """Everything a run checks before its process group, then the estimate; no weights, no group."""
    vocabulary = resolve_vocabulary(args, run)
    if vocabulary.padded_size is None:
        raise ConfigError("--dry-run needs the vocabulary size: give --tokenizer-type with its files, or "
                          "--vocab-size N.")
    if os.environ.get("RANK", "0") == "0":
        block = estimate_block(model_shape, vocabulary, run)
        print(block if block is not None else "dry run: the flags are valid (this entry point has no size "
                                              "estimate)", flush=True)
        print("dry run: flags validated, no weights built; exiting.", flush=True)
