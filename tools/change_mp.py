#!/usr/bin/env python
"""Reshard a checkpoint to other tensor / pipeline / data-parallel sizes, optimizer included.

    python tools/change_mp.py ckpt/ --target-tensor-parallel-size 4 --output ckpt_tp4/
    python tools/change_mp.py ckpt/ --target-tensor-parallel-size 1 --target-pipeline-parallel-size 1
    python tools/change_mp.py ckpt/ 2            # the seed's short form: writes ckpt_MP2/

CKPT is a --save directory (latest_checkpointed_iteration.txt or latest) or one
iteration's directory (iter_0000005, global_step5, release), in either layout. Any TP x PP
goes to any TP' x PP' for every model family, from the sharding map stored in the
checkpoint (no model is built, no process group started): fused QKV by query group, GLU
halves, tied copies and stage tables follow the map; a one-stage checkpoint cuts into any
number of stages, and a T5 into any encoder / decoder split
(--target-pipeline-model-parallel-split-rank). The padded vocabulary is kept
unless --make-vocab-size-divisible-by re-pads it (rows past the true vocabulary are
zeros). Optimizer state (fp32 masters, Adam moments, step; distributed-optimizer shards
too) is resharded per parameter, so the result loads at any data-parallel size with or
without --use-distributed-optimizer; iteration, consumed samples, scheduler and loss scaler
are kept, so training resumes; so are the model's family and options (a checkpoint written
before they were recorded gets them: the family guessed once, with one printed line). --no-optim drops the optimizer (the run then starts a fresh
one from the weights). RNG streams belong to the saved ranks and are dropped.

Streaming: one output tensor and a bounded window of memory-mapped source pages in memory
at a time; every file is written under a temporary name and renamed; the tracker last.
(`--load` of a checkpoint at other sizes reshards on load, with no need for this tool.)
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_core.cli import run  # noqa: E402
from megatron_core.errors import ConfigError  # noqa: E402
from megatron_core.checkpoint.reshard.rewrite import Target, reshard_checkpoint  # noqa: E402
from megatron_core.models.registry import get_family  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a --save directory or one iteration's directory")
    p.add_argument("target_mp", nargs="?", type=int, help="short form: the target tensor-parallel size "
                   "(writes CKPT_MP{M} unless --output is given)")
    p.add_argument("--target-tensor-parallel-size", type=int)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-model-parallel-split-rank", type=int,
                   help="an encoder-decoder (T5): the first decoder stage of the target pipeline (default: the "
                        "source's when the pipeline size is kept)")
    p.add_argument("--target-data-parallel-size", type=int,
                   help="recorded in the result (its per-parameter optimizer state loads at any DP size)")
    p.add_argument("--output", help="the new checkpoint directory (default CKPT_MP{M})")
    p.add_argument("--no-optim", action="store_true", help="drop the optimizer state")
    p.add_argument("--no-verify-checkpoint", action="store_true",
                   help="Check the checkpoint's files against its manifest by size only, not by checksum "
                        "(a huge checkpoint on a slow disk)")
    p.add_argument("--ckpt-format", choices=("megatron", "deepspeed"),
                   help="the layout to write (default: the source's)")
    p.add_argument("--make-vocab-size-divisible-by", type=int,
                   help="re-pad the vocabulary to a multiple of this x the target TP (default: keep its padded size)")
    args = p.parse_args(argv)
    size = args.target_tensor_parallel_size or args.target_mp
    if size is None:
        raise ConfigError("give the target tensor-parallel size: --target-tensor-parallel-size M (or the short "
                          "form tools/change_mp.py CKPT M).")
    if args.target_mp is not None and args.target_tensor_parallel_size not in (None, args.target_mp):
        raise ConfigError(f"the short form says TP={args.target_mp} but --target-tensor-parallel-size says "
                          f"{args.target_tensor_parallel_size}; give one.")
    for flag, value in (("--target-tensor-parallel-size", size),
                        ("--target-pipeline-parallel-size", args.target_pipeline_parallel_size),
                        ("--target-data-parallel-size", args.target_data_parallel_size or 1)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be at least 1.")
    args.size = size
    args.output = args.output or os.path.normpath(args.checkpoint) + f"_MP{size}"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.no_optim:
        print("note: --no-optim: the optimizer state is dropped; a run loading the result starts a fresh "
              "optimizer from the weights.", flush=True)
    start = time.time()
    # The work is file reads, memory copies and writes: torch's intra-op threads only add
    # synchronisation to each copy (measured: 1.3 s with one thread, 2.1 s with two, for a
    # 400 MB checkpoint on 2 busy cores).
    torch.set_num_threads(1)
    summary = reshard_checkpoint(args.checkpoint, args.output, Target(
        args.size, args.target_pipeline_parallel_size, args.target_data_parallel_size, not args.no_optim,
        args.ckpt_format, args.make_vocab_size_divisible_by, args.target_pipeline_model_parallel_split_rank),
        progress=lambda line: print(line, flush=True),
        legacy_options=lambda family, args: get_family(family).options(args),   # a file that records none
        verify_checksums=not args.no_verify_checkpoint)
    tp, pp, dp = summary["source"]
    print(f"resharded checkpoint iteration {summary['iteration'] if summary['iteration'] is not None else 'release'} "
          f"from TP={tp} PP={pp} DP={dp} to TP={args.size} PP={args.target_pipeline_parallel_size} "
          f"DP={args.target_data_parallel_size or dp} ({'with' if summary['optimizer'] else 'without'} optimizer, "
          f"{summary['layout']} layout, padded vocabulary {summary['padded_vocab_size']}): "
          f"{summary['bytes_written'] / 1e6:.1f} MB in {time.time() - start:.2f} s -> {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
