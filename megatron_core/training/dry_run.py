"""--dry-run: parse, validate, print the parameter count and memory estimate, exit; and the
vocabulary size both a dry run and a real run start from.

A dry run starts no process group and builds no weights, so one process can check the
flags of a layout meant for 64 ranks. The world size it validates against is, in order:
--dry-run-world-size N; the launcher's WORLD_SIZE (or mpirun's OMPI_COMM_WORLD_SIZE) when
set; else TP x PP (data-parallel size 1). The scripts in scripts/ pass the slots of their
hostfile.

The vocabulary: Megatron builds the tokenizer to learn its size and pads it to a multiple
of --make-vocab-size-divisible-by x TP. A dry run does the same when the tokenizer files
exist; without them it takes --vocab-size N (the tokenizer's unpadded size, Megatron's
flag name). A real run always builds the tokenizer, and a --vocab-size that disagrees
with it is one sentence.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from ..errors import ConfigError, UserError
from ..mpu.layout import pad_vocab_size
from ..checkpoint.formats import layout_named
from ..checkpoint.reshard import saved_padded_vocab_size
from .config import RunConfig
from .data_providers import build_tokenizer
from .initialize import launcher_world_size
from .memory_estimate import estimate_memory, format_estimate


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


def set_padded_vocab_size(args, run: RunConfig) -> None:
    """args.tokenizer (None in a dry run given --vocab-size) and args.padded_vocab_size."""
    args.tokenizer = None
    given = getattr(args, "vocab_size", None)
    if getattr(args, "dry_run", False) and given is not None:
        vocab = given
    elif getattr(args, "tokenizer_type", None):
        try:
            args.tokenizer = build_tokenizer(run.data)
        except UserError as e:
            if getattr(args, "dry_run", False):
                raise ConfigError(f"{e} A dry run without the tokenizer files needs --vocab-size N (the "
                                  f"tokenizer's size before padding).") from None
            raise
        vocab = args.tokenizer.vocab_size
        if given is not None and given != vocab:
            raise ConfigError(f"--vocab-size {given} disagrees with the tokenizer's {vocab} tokens "
                              f"(--tokenizer-type {args.tokenizer_type}); drop --vocab-size or fix it.")
    elif given is not None:
        vocab = given
    else:
        return
    args.padded_vocab_size = pad_vocab_size(vocab, args.make_vocab_size_divisible_by,
                                            run.parallel.tensor_model_parallel_size)
    if getattr(args, "dry_run", False):
        return
    # A checkpoint keeps its padded vocabulary at any TP size that divides it (DESIGN.md).
    saved = saved_padded_vocab_size(run.checkpoint.load, layout_named(run.checkpoint.ckpt_format))
    if saved and saved >= vocab and saved % run.parallel.tensor_model_parallel_size == 0:
        args.padded_vocab_size = saved


def estimate_block(model_shape: Optional[Callable], args, run: RunConfig) -> Optional[str]:
    """The parameter and memory block of the entry point's model (None without a shape provider
    or a vocabulary)."""
    if model_shape is None or getattr(args, "padded_vocab_size", None) is None:
        return None
    return format_estimate(estimate_memory(model_shape(args), run), run)


def dry_run(model_shape: Optional[Callable], args, run: RunConfig) -> None:
    """Everything a run checks before its process group, then the estimate; no weights, no group."""
    set_padded_vocab_size(args, run)
    if getattr(args, "padded_vocab_size", None) is None:
        raise ConfigError("--dry-run needs the vocabulary size: give --tokenizer-type with its files, or "
                          "--vocab-size N.")
    if os.environ.get("RANK", "0") == "0":
        block = estimate_block(model_shape, args, run)
        print(block if block is not None else "dry run: the flags are valid (this entry point has no size "
                                              "estimate)", flush=True)
        print("dry run: flags validated, no weights built; exiting.", flush=True)
