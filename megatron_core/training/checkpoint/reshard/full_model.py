"""The whole model (TP=1, PP=1) of a saved checkpoint, for converters (HuggingFace export):

    state, info = read_full_model_state("ckpt/")          # any TP x PP, either layout
    for key, tensor in iter_full_model_state("ckpt/"):    # one tensor at a time
        ...

Keys are the whole model's state-dict keys (what a TP=1 model built on one stage holds:
layers by global index, stage copies dropped). The padded vocabulary is kept (info says
the true and padded sizes); each tensor is new (it drags no file mapping).
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch

from .source import SavedCheckpoint
from .targets import target_weight


def iter_full_model_state(directory: str) -> Iterator[Tuple[str, torch.Tensor]]:
    source = SavedCheckpoint(directory)
    for name, owner in source.owners.items():
        yield name, target_weight(source, name, owner.spec, 0, 1)
    source.files.release()


def read_full_model_state(directory: str) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """(whole model's state dict, info): info holds model_config, args, iteration,
    vocab_size, padded_vocab_size, the saved parallel sizes and the whole model's
    sharding map (as a dict)."""
    source = SavedCheckpoint(directory)
    head = source.head
    info = {"model_config": head.get("model_config"), "args": head.get("args"), "iteration": source.iteration,
            "vocab_size": head.get("vocab_size"), "padded_vocab_size": head.get("padded_vocab_size"),
            "parallel": dict(source.parallel), "sharding_map": source.whole_model_map().to_dict()}
    state = {name: target_weight(source, name, owner.spec, 0, 1) for name, owner in source.owners.items()}
    source.files.release()
    return state, info
