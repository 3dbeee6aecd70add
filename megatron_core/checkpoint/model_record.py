"""What model a checkpoint holds: its family and the builder's arguments, recorded when written.

Every file a writer of this package makes (the training loop in either layout and the
DeepSpeed engine's client state, tools/change_mp.py, the converters, the weights-only
writer) carries, beside `model_config` (the TransformerConfig) and the vocabulary sizes:

    model_family     our family name ("gpt", "bert", "roformer", "t5", "transformer_xl", or
                     one registered at runtime: models/registry.py). A Llama-style model is
                     "gpt" with its config; HF names such as llama or megatron_bert are
                     architectures of a family (its HF mappings), never a family.
    model_options    what the family's builder takes beyond the config and the vocabulary,
                     as plain values (max_position_embeddings; BERT's binary head; T5's
                     decoder layers; Transformer-XL's mem_length; ...)

so every reader (resume, change_mp, --to-hf, generate_text, the server) takes the family
from the file. A checkpoint written before families were recorded is guessed from its
tensor names and config once, here and nowhere else, and says so in one printed line.
"""
from __future__ import annotations

import sys
from typing import Callable, Collection, Mapping, Optional

import torch.distributed as dist

from ..errors import CheckpointError

FAMILY_KEY = "model_family"
OPTIONS_KEY = "model_options"


def model_record(family: str, options: Mapping) -> dict:
    """The two entries a writer adds to every file it writes."""
    return {FAMILY_KEY: family, OPTIONS_KEY: dict(options)}


def guess_family(keys: Collection[str], args: Mapping, config: Mapping) -> Optional[str]:
    """A legacy checkpoint's family from its tensor names (the whole model's, or one pipeline
    stage's), its flags and its config; None when nothing matches.

        r_w_bias                                          transformer_xl
        encoder.* and decoder.*, cross-attention,
        T5 bucket tables, or a pipeline split rank        t5
        encoder.*, rotary positions                       roformer
        encoder.*                                         bert
        decoder.*                                         gpt
    """
    keys = list(keys)
    if any(k == "r_w_bias" or k.endswith(".r_w_bias") for k in keys):
        return "transformer_xl"
    encoder = any(k.startswith("encoder.") for k in keys)
    decoder = any(k.startswith("decoder.") for k in keys)
    split = (args.get("pipeline_model_parallel_size") or 1) > 1 and args.get("pipeline_model_parallel_split_rank")
    if (encoder and decoder) or split or any(".inter_attention." in k or k.startswith(
            ("encoder_relative_bias", "decoder_relative_bias")) for k in keys):
        return "t5"
    if encoder:
        rotary = (config.get("position_embedding_type") or args.get("position_embedding_type")) == "rope"
        return "roformer" if rotary else "bert"
    return "gpt" if decoder else None


def _print_once(line: str) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    print(line, file=sys.stderr, flush=True)


def saved_family(where: str, head: Mapping, keys: Collection[str],
                 say: Callable[[str], None] = _print_once) -> str:
    """The family `head` (a checkpoint file's entries) records; a legacy file's is guessed
    from `keys` (its tensor names) with one line through `say`."""
    recorded = head.get(FAMILY_KEY)
    if isinstance(recorded, str) and recorded:
        return recorded
    args = head.get("args") if isinstance(head.get("args"), Mapping) else {}
    config = head.get("model_config") if isinstance(head.get("model_config"), Mapping) else {}
    guessed = guess_family(keys, args, config)
    if guessed is None:
        raise CheckpointError(f"{where} records no model family and its tensors (e.g. {sorted(keys)[:3]}) match none; "
                              f"it was not written by this package.")
    say(f"note: {where} records no model family (written before checkpoints recorded it); guessed {guessed!r} "
        f"from its tensor names and config.")
    return guessed


def check_family(where: str, head: Mapping, keys: Collection[str], expected: str) -> str:
    """The family of the checkpoint a run of family `expected` loads: one sentence if another."""
    found = saved_family(where, head, keys)
    if found != expected:
        raise CheckpointError(f"{where} holds a {found} model and this run trains a {expected} model; load it with "
                              f"the entry point of its family (e.g. pretrain_{found}.py), or give another --load.")
    return found
