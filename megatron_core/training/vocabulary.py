"""The vocabulary a run starts from: the tokenizer, its size, and the padded size of the embedding.

    vocabulary = resolve_vocabulary(args, run)     # Vocabulary(tokenizer, size, padded_size)

Megatron builds the tokenizer to learn its size and pads it to a multiple of
--make-vocab-size-divisible-by x TP. A dry run does the same when the tokenizer files
exist; without them it takes --vocab-size N (the tokenizer's unpadded size, Megatron's
flag name). A real run always builds the tokenizer, and a --vocab-size that disagrees with
it is one sentence. A checkpoint keeps its padded vocabulary at any TP size that divides it
(DESIGN.md): a run that loads one takes the saved padded size.

Megatron sets args.padded_vocab_size and args.tokenizer; here the result is a value the
loop hands on (training/train_spec.py's TrainRun, the Checkpointer), and `args` stays what
the user gave.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..checkpoint.formats import layout_named
from ..checkpoint.reshard import open_source, saved_padded_vocab_size, torch_dist_directory
from ..errors import CheckpointError, ConfigError, UserError
from ..mpu.layout import pad_vocab_size
from .config import RunConfig
from .data_providers import build_tokenizer


@dataclass(frozen=True)
class Vocabulary:
    tokenizer: Any = None                 # None in a dry run given --vocab-size
    size: Optional[int] = None            # the tokenizer's
    padded_size: Optional[int] = None     # the embedding's rows; None: no vocabulary given


def resolve_vocabulary(args, run: RunConfig) -> Vocabulary:
    """The run's vocabulary from its flags (and the padded size of a checkpoint it loads)."""
    given = getattr(args, "vocab_size", None)
    dry = bool(getattr(args, "dry_run", False))
    tokenizer = None
    if dry and given is not None:
        size = given + 1 if getattr(args, "tokenizer_type", None) == "NullTokenizer" else given   # + its eod
    elif getattr(args, "tokenizer_type", None):
        try:
            tokenizer = build_tokenizer(run.data)
        except UserError as e:
            if dry:
                raise ConfigError(f"{e} A dry run without the tokenizer files needs --vocab-size N (the "
                                  f"tokenizer's size before padding).") from None
            raise
        size = tokenizer.vocab_size
        if given is not None and given != size and args.tokenizer_type != "NullTokenizer":   # N ids + its eod
            raise ConfigError(f"--vocab-size {given} disagrees with the tokenizer's {size} tokens "
                              f"(--tokenizer-type {args.tokenizer_type}); drop --vocab-size or fix it.")
    elif given is not None:
        size = given
    else:
        return Vocabulary()
    tp = run.parallel.tensor_model_parallel_size
    padded = pad_vocab_size(size, args.make_vocab_size_divisible_by, tp)
    if not dry:
        saved = _saved_padded_size(run.checkpoint.load, run.checkpoint.ckpt_format)
        if saved and saved >= size and saved % tp == 0:
            padded = saved
    return Vocabulary(tokenizer, size, padded)


def _saved_padded_size(load: Optional[str], ckpt_format: str) -> Optional[int]:
    """The padded vocabulary of the checkpoint --load names; a torch_dist one's from its args."""
    if load and torch_dist_directory(load):
        try:
            return open_source(load, verify=None).padded_vocab_size     # (the checkpointer's load verifies it)
        except (CheckpointError, OSError):
            return None     # the checkpointer's load reports a damaged checkpoint in its own words
    return saved_padded_vocab_size(load, layout_named(ckpt_format))
