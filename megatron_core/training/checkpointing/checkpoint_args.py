"""--use-checkpoint-args: the model shape and parallel sizes from the --load checkpoint.

Precedence: a flag given on the command line > the checkpoint's value > the default. It
runs before the flags are validated and before any process group exists: every rank
reads the first model file of the checkpoint the tracker names (its `args` entry, plain
values). Afterwards every argument of this run that differs from the checkpoint's is
printed (rank 0), so a changed learning rate or batch size is visible, not silent.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, List, Optional, Sequence

from ...errors import CheckpointError
from ..arguments import add_megatron_arguments
from ...checkpoint import reshard
from ...checkpoint.formats import tracked_checkpoint

# What decides the model a checkpoint holds (Megatron-LM's load_args_from_checkpoint list, in our flags).
MODEL_ARGS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels", "group_query_attention",
    "num_query_groups", "seq_length", "max_position_embeddings", "position_embedding_type", "rotary_percent",
    "rotary_interleaved", "rotary_base", "make_vocab_size_divisible_by", "normalization", "norm_epsilon",
    "apply_residual_connection_post_layernorm", "layernorm_position", "swiglu", "openai_gelu",
    "untie_embeddings_and_output_weights", "add_bias_linear",
    "add_qkv_bias", "tokenizer_type", "vocab_file", "merge_file", "tokenizer_model", "vocab_extra_ids",
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage",
)
# Values that differ between any two runs and mean nothing to compare.
_NOT_COMPARED = {"load", "save", "use_checkpoint_args", "world_size", "data_parallel_size", "local_rank",
                 "consumed_train_samples", "consumed_valid_samples", "padded_vocab_size", "params_dtype"}


def explicit_destinations(argv: Sequence[str], extra_args_provider: Optional[Callable]) -> set:
    """The `dest` of every flag spelled out in argv (the ones the command line decides)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    add_megatron_arguments(parser)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    given = set()
    options = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    for action in parser._actions:
        if options.intersection(action.option_strings):
            given.add(action.dest)
    return given


def read_checkpoint_args(directory: str, ckpt_format: str) -> tuple:
    if reshard.torch_dist_directory(directory):     # Megatron-LM's torch_dist: the args of its common.pt
        source = reshard.open_source(directory, verify=None)      # (the load verifies it)
        return source.head["args"], source.iteration_path
    layout, _, path = tracked_checkpoint(directory, ckpt_format, "--load (read by --use-checkpoint-args)")
    saved = layout.read(path, mmap=True)       # a Megatron-LM file's Namespace comes back as plain values
    record = saved.get("args")
    if not isinstance(record, dict):
        raise CheckpointError(f"{path} holds no args; give the model flags instead of --use-checkpoint-args.")
    return record, path


def apply_checkpoint_args(args, argv: Optional[Sequence[str]], extra_args_provider: Optional[Callable] = None
                          ) -> List[str]:
    """Fill the model flags the command line left out from the checkpoint (in place); the lines printed."""
    if not getattr(args, "use_checkpoint_args", False):
        return []
    if not args.load:
        raise CheckpointError("--use-checkpoint-args reads the checkpoint given by --load; add --load DIR.")
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    record, path = read_checkpoint_args(args.load, args.ckpt_format)
    given = explicit_destinations(argv, extra_args_provider)
    for name in MODEL_ARGS:
        if name in record and name not in given:
            setattr(args, name, record[name])
    lines = [f"arguments that differ from the checkpoint's ({path}):"]
    for name in sorted(set(record) & set(vars(args)) - _NOT_COMPARED):
        mine = getattr(args, name)
        mine = list(mine) if isinstance(mine, tuple) else mine
        if mine != record[name]:
            lines.append(f"  {name}: {record[name]!r} in the checkpoint, {mine!r} in this run")
    if len(lines) == 1:
        lines.append("  (none)")
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(lines), flush=True)
    return lines
