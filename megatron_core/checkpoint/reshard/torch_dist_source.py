"""A Megatron-LM `torch_dist` checkpoint as the resharder reads a source (source.py's face).

    source = open_source("megatron_ckpt/")     # a torch_dist directory, or any checkpoint of ours
    target_weight(source, "decoder.layers.0.mlp.dense_h_to_4h.weight", spec, rank, size)

torch.distributed.checkpoint keeps every tensor whole, by megatron-core's TP=1 names
(megatron_lm/torch_dist.py reads one at a time), so the source is one tensor-parallel
rank and one stage holding the whole model under our names (key_names.ours_from_mcore),
split for any target by the same rules by module kind as a torch-format file
(megatron_lm/files.py). Its head (counters, args, config, family) is made from common.pt's
args as a torch-format file's is. The optimizer state is not read yet.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ...errors import CheckpointError
from ...mpu.sharding_map import ShardingMap
from ...transformer.config import GATED_ACTIVATIONS, TransformerConfig
from ..formats import LAYOUTS
from ..megatron_lm.args import ALLOWED_GLOBALS, check_supported, parallel_sizes, plain_args
from ..megatron_lm.files import contents_head, family_of_mcore_keys, parallel_record, spec_of
from ..megatron_lm.key_names import ours_from_mcore, unsupported_feature
from ..megatron_lm.torch_dist import read_torch_dist
from .source import Owner, SavedCheckpoint

TORCH_DIST = "torch_dist"


def torch_dist_directory(directory: str) -> Optional[str]:
    """The iteration directory of a torch_dist checkpoint at `directory` (its --save directory or
    one iteration's), or None when it is not one."""
    candidates = [directory]
    tracker = os.path.join(directory, "latest_checkpointed_iteration.txt")
    if os.path.isfile(tracker):
        with open(tracker) as f:
            text = f.read().strip()
        candidates.insert(0, os.path.join(directory, "release" if text == "release" else
                                          f"iter_{int(text):07d}" if text.isdigit() else text))
    for path in candidates:
        if os.path.isfile(os.path.join(path, ".metadata")) or os.path.isfile(os.path.join(path, "metadata.json")):
            return path
    return None


class _WholeTensors:
    """The files face the resharder copies through: tensors here are in memory already."""

    @staticmethod
    def copy(dest: torch.Tensor, view: torch.Tensor) -> None:
        dest.copy_(view)

    def release(self) -> None:
        pass


class TorchDistSource:
    layout = LAYOUTS["megatron"]          # Megatron-LM's directories and tracker; the files are DCP's
    engine = False
    engine_stage = None
    chunk_keys = ["model"]

    def __init__(self, iteration_path: str):
        checkpoint = read_torch_dist(iteration_path, allow=ALLOWED_GLOBALS)
        self.iteration_path = checkpoint.directory
        self.root = os.path.dirname(os.path.normpath(self.iteration_path))
        name = os.path.basename(os.path.normpath(self.iteration_path))
        self.iteration = int(name[5:]) if name.startswith("iter_") and name[5:].isdigit() else None
        common = checkpoint.common
        if "args" not in common:
            raise CheckpointError(f"{self.iteration_path}/common.pt holds no args, so the model it holds is unknown; "
                                  f"it was not saved by Megatron-LM's training loop.")
        args = plain_args(common["args"])
        check_supported(args, self.iteration_path)
        for key in checkpoint.tensors:
            what = unsupported_feature(key)
            if what:
                raise CheckpointError(f"{self.iteration_path} holds {key}, a tensor of {what}, which megatron_core "
                                      f"does not build; convert a dense GPT, BERT or T5 model.")
        tp, pp, _ = parallel_sizes(args, self.iteration_path)
        config = TransformerConfig.from_megatron_flags(args)
        family = family_of_mcore_keys(list(checkpoint.tensors))
        self._tensors = checkpoint.tensors
        self._theirs: Dict[str, str] = {ours_from_mcore(key): key for key in checkpoint.tensors}
        gated = config.activation in GATED_ACTIVATIONS
        self.owners = {ours: Owner(0, "model", ours, spec_of(ours, gated)) for ours in self._theirs}
        table = self._theirs.get("embedding.word_embeddings.weight")
        padded = args.get("padded_vocab_size") or (self._tensors.shape(table)[0] if table else None)
        self.head = contents_head(args, config, family, float(common.get("checkpoint_version") or 3.0),
                                  common.get("iteration", self.iteration))
        self.head.update(padded_vocab_size=padded, vocab_size=args.get("vocab_size") or padded,
                         parallel=parallel_record(args, 1, 1, None, TORCH_DIST),
                         megatron_lm_skipped_entries=checkpoint.extra_states_skipped)
        self.head["parallel"]["saved_as"] = [tp, pp]
        if isinstance(common.get("opt_param_scheduler"), dict):
            self.head["opt_param_scheduler"] = dict(common["opt_param_scheduler"])
        self.parallel = self.head["parallel"]
        self.tp = self.pp = 1
        self.maps = {(0, "model"): ShardingMap({k: o.spec for k, o in self.owners.items()}, 1, padded,
                                               self.head["vocab_size"], {})}
        self.files = _WholeTensors()
        self._last = (None, None)

    @property
    def padded_vocab_size(self) -> Optional[int]:
        return self.head.get("padded_vocab_size")

    def whole_model_map(self) -> ShardingMap:
        return self.maps[(0, "model")]

    def owner(self, name: str) -> Owner:
        if name not in self.owners:
            raise CheckpointError(f"{self.iteration_path} holds no tensor {name!r}; it was saved from another model.")
        return self.owners[name]

    def weight(self, name: str, tensor_rank: int) -> torch.Tensor:
        if self._last[0] != name:        # the resharder asks for the same tensor piece by piece
            self._last = (name, self._tensors[self._theirs[self.owner(name).key]])
        return self._last[1]

    def model_path(self, tensor_rank: int, pipeline_rank: int) -> str:
        return self.iteration_path

    def has_optimizer(self) -> bool:
        return False

    def has_optimizer_entry(self, name: str) -> bool:
        return False


def open_source(directory: str, preferred: str = "megatron", **options):
    """The resharder's source for a checkpoint directory: Megatron-LM's torch_dist, or ours
    (either layout, Megatron-LM's torch files included: SavedCheckpoint)."""
    torch_dist = torch_dist_directory(directory)
    if torch_dist is not None:
        return TorchDistSource(torch_dist)
    return SavedCheckpoint(directory, preferred, **options)
