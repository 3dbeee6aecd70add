"""What tools/generate_text.py, tools/run_text_generation_server.py and tools/evaluate.py share: their flags,
the process group, and the checkpoint with its tokenizer.

One process (`python tools/generate_text.py --load CKPT`) or TP x PP processes launched
by torchrun (`torchrun --nproc-per-node 4 tools/generate_text.py --load CKPT`, at the
checkpoint's sizes or any others given by --tensor-model-parallel-size and
--pipeline-model-parallel-size: the checkpoint is resharded on load); rank 0 reads input
and prints, every rank runs the model. The tokenizer is the one the
checkpoint was trained with (its stored --tokenizer-type, --vocab-file, ...); a flag
given here overrides the stored value (a moved vocabulary file).
"""
from __future__ import annotations

import argparse
import datetime
import os
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

from ..data.tokenizers import TOKENIZER_TYPES, build_tokenizer
from ..errors import ConfigError
from ..training.initialize import launcher_world_size
from .checkpoint_model import LoadedModel, load_checkpoint_model
from .sampling import SamplingParams
from .text_generation import TextGenerator

TOKENIZER_FLAGS = ("tokenizer_type", "vocab_file", "merge_file", "tokenizer_model", "vocab_extra_ids")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint directory (a training run's --save)")
    parser.add_argument("--no-verify-checkpoint", action="store_true",
                        help="Check the checkpoint's files against its manifest by size only, not by checksum "
                             "(a huge checkpoint on a slow disk)")
    g = parser.add_argument_group("layout (default: the checkpoint's on its TP x PP processes, TP=PP=1 on one; "
                                  "other sizes reshard on load)")
    g.add_argument("--tensor-model-parallel-size", type=int, default=None)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=None)
    g = parser.add_argument_group("tokenizer (default: the checkpoint's)")
    g.add_argument("--tokenizer-type", default=None, choices=list(TOKENIZER_TYPES))
    g.add_argument("--vocab-file", default=None)
    g.add_argument("--merge-file", default=None)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-extra-ids", type=int, default=None)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--greedy", action="store_true", help="always the most likely token")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling: the most likely tokens up to this "
                                                            "probability mass (0: off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present")
    g.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")


def sampling_params(args) -> SamplingParams:
    return SamplingParams(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


def start_world() -> None:
    """The launcher's process group (torchrun / deepspeed / mpirun), or a world of one."""
    if dist.is_initialized():
        return
    world = launcher_world_size()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    if world == 1 and "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=world,
                                timeout=datetime.timedelta(minutes=30))


def is_first_rank() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def share_from_first_rank(value: Any) -> Any:
    """Rank 0's value on every rank (prompts read from a terminal, a server's request)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box: List[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def load_model_and_tokenizer(args) -> Tuple[LoadedModel, Any]:
    """The checkpoint's model at this world's layout and the tokenizer it was trained with
    (a tokenizer flag given in `args` overrides the stored one)."""
    start_world()
    loaded = load_checkpoint_model(args.load, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                   verify_checksums=not args.no_verify_checkpoint)
    settings = {name: loaded.args.get(name) for name in TOKENIZER_FLAGS}
    settings.update({name: getattr(args, name) for name in TOKENIZER_FLAGS if getattr(args, name, None) is not None})
    if not settings["tokenizer_type"]:
        raise ConfigError(f"{args.load} stores no --tokenizer-type; give --tokenizer-type and its files "
                          f"(e.g. --vocab-file).")
    tokenizer = build_tokenizer(settings["tokenizer_type"], vocab_file=settings["vocab_file"],
                                merge_file=settings["merge_file"], tokenizer_model=settings["tokenizer_model"],
                                vocab_extra_ids=settings["vocab_extra_ids"] or 0)
    return loaded, tokenizer


def load_text_generator(args, keep_memory: bool = False) -> TextGenerator:
    loaded, tokenizer = load_model_and_tokenizer(args)
    return TextGenerator(loaded, tokenizer, keep_memory=keep_memory)
