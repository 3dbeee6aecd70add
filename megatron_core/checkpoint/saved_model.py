"""The whole model of a saved checkpoint, merged one tensor at a time from its mapped shards.

    saved = open_saved_model("ckpt/")          # a --save directory, or one iteration's directory
    saved.model_config, saved.args, saved.vocab_size, saved.padded_vocab_size
    saved.family                                # as recorded (a legacy checkpoint's: guessed, one line)
    full = saved.state                          # a read-only Mapping: the TP=1, one-stage state dict
    table = full["embedding.word_embeddings.weight"]   # merged from every TP shard now, nothing kept

    state, info = read_full_model_state("ckpt/")          # the same, as a dict, plus what it is
    for key, tensor in iter_full_model_state("ckpt/"):    # one tensor at a time

Either layout (Megatron's mp_rank_XX[_YYY]/model_optim_rng.pt, DeepSpeed's
mp_rank_XX_model_states.pt), with a tracker (latest_checkpointed_iteration.txt, latest) or
without one (one iteration's directory, or a --save directory whose newest iteration is
read): the checkpoint is read by the resharder's reader (reshard/source.py), so there is one
reader of saved shards. Files are memory maps; a merged tensor is a new tensor (it drags no
file mapping). Keys are the whole model's (layers by global index; stage copies such as a
tied output table on the last stage dropped in favour of their original; virtual pipeline
chunks put back in order); the padded vocabulary is kept. No model is built and no process
group is needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError
from ..mpu.sharding_map import ShardSpec
from .manifest import Verification
from .model_record import OPTIONS_KEY, saved_family
from .reshard.source import SavedCheckpoint
from .reshard.torch_dist_source import open_source
from .reshard.targets import target_weight


class MergedState(Mapping):
    """The whole model's state dict as a Mapping; each lookup merges that tensor's shards."""

    def __init__(self, source: SavedCheckpoint):
        self._source = source

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._source.owners:
            raise KeyError(key)
        return target_weight(self._source, key, self._source.owners[key].spec, 0, 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.owners)

    def __len__(self) -> int:
        return len(self._source.owners)

    def spec(self, key: str) -> ShardSpec:
        return self._source.owners[key].spec


@dataclass
class SavedModel:
    path: str                       # the iteration directory read
    layout: str                     # "megatron" or "deepspeed"
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    record: dict                    # the first rank file's entries (args, model_config, ...), weights left out
    state: MergedState = field(repr=False)
    source: SavedCheckpoint = field(repr=False)
    _family: Optional[str] = field(default=None, repr=False)

    @property
    def args(self) -> dict:
        return self.record.get("args") or {}

    @property
    def model_config(self) -> dict:
        config = self.record.get("model_config")
        if not config:
            raise CheckpointError(f"{self.path} carries no model_config; it was not written by this package's "
                                  f"training loop or converter.")
        return config

    @property
    def family(self) -> str:
        """Our family name, as the checkpoint records it (model_record.py)."""
        if self._family is None:
            self._family = saved_family(self.path, self.record, list(self.state))
        return self._family

    @property
    def model_options(self) -> Optional[dict]:
        """The family builder's arguments beyond the config; None in a legacy checkpoint."""
        return self.record.get(OPTIONS_KEY)

    @property
    def vocab_size(self) -> Optional[int]:
        return self.record.get("vocab_size")

    @property
    def padded_vocab_size(self) -> Optional[int]:
        return self.record.get("padded_vocab_size")


def open_saved_model(directory: str, verify: Optional[Verification] = Verification(optimizer=False)) -> SavedModel:
    """verify: checked against the checkpoint's manifest first (the weights' files; manifest.py)."""
    source = open_source(directory, verify=verify)
    return SavedModel(source.iteration_path, source.layout.name, source.tp, source.pp, dict(source.head),
                      MergedState(source), source)


def iter_full_model_state(directory: str) -> Iterator[Tuple[str, torch.Tensor]]:
    saved = open_saved_model(directory)
    for name in saved.state:
        yield name, saved.state[name]
    saved.source.files.release()


def read_full_model_state(directory: str) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """(whole model's state dict, info): info holds model_config, args, model_family, model_options, iteration,
    vocab_size, padded_vocab_size, the saved parallel sizes and the whole model's
    sharding map (as a dict)."""
    saved = open_saved_model(directory)
    source = saved.source
    info = {"model_config": saved.record.get("model_config"), "args": saved.record.get("args"),
            "model_family": saved.family, "model_options": saved.model_options,
            "iteration": source.iteration, "vocab_size": saved.vocab_size,
            "padded_vocab_size": saved.padded_vocab_size, "parallel": dict(source.parallel),
            "sharding_map": source.whole_model_map().to_dict()}
    state = dict(saved.state.items())
    source.files.release()
    return state, info
