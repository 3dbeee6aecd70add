"""A Megatron-LM `torch_dist` checkpoint as the resharder reads a source (source.py's face).

    source = open_source("megatron_ckpt/")     # a torch_dist directory, or any checkpoint of ours
    target_weight(source, "decoder.layers.0.mlp.dense_h_to_4h.weight", spec, rank, size)

torch.distributed.checkpoint keeps every tensor whole, by megatron-core's TP=1 names
(megatron_lm/torch_dist.py reads one at a time), so the source is one tensor-parallel
rank and one stage holding the whole model under our names (key_names.ours_from_mcore),
split for any target by the same rules by module kind as a torch-format file
(megatron_lm/files.py). Its head (counters, args, config, family) is made from common.pt's
args as a torch-format file's is.

The optimizer state is per parameter already: each field a whole tensor of the parameter's
shape (`optimizer.state.exp_avg.<key>`, torch_dist.py), split like the weight, and Adam's
step once in common.pt. Fields, as the torch-format path gives them:

    exp_avg, exp_avg_sq    optimizer.state.exp_avg.<key>, optimizer.state.exp_avg_sq.<key>
    fp32_master            a bf16/fp16 model's master: optimizer.state.fp32_param.<key> (the plain
                           optimizer), optimizer.state.param.<key> (the distributed optimizer's
                           fully_reshardable sharding type)
    step                   common.pt's optimizer.state.common_step (the plain optimizer), or
                           the step each of the distributed optimizer's param groups carries

A checkpoint saved without the optimizer has none: a run starts a fresh optimizer. The
distributed optimizer's other sharding types (megatron-core's dp_reshardable, Megatron-LM's
default, keeps each rank's grad-buffer slices) are not read: a run that wants the optimizer
stops on one sentence saying how to save or load it instead.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple

import torch

from ...errors import CheckpointError
from ...mpu.sharding_map import ShardingMap
from ...transformer.config import GATED_ACTIVATIONS, TransformerConfig
from ..formats import LAYOUTS
from ..manifest import Verification, check_intact
from ..megatron_lm.args import ALLOWED_GLOBALS, check_supported, parallel_sizes, plain_args
from ..megatron_lm.files import OPTIMIZER_UNREADABLE, contents_head, family_of_mcore_keys, parallel_record, spec_of
from ..megatron_lm.key_names import alias_of, known, ours_from_mcore, t5_aliases, unsupported_feature
from ..megatron_lm.torch_dist import read_torch_dist
from .source import Owner, SavedCheckpoint, locate

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
        family = family_of_mcore_keys(list(checkpoint.tensors))
        names = [key for key in checkpoint.tensors if not (family == "t5" and alias_of(key) in checkpoint.tensors)]
        for key in names:
            what = unsupported_feature(key)
            if what:
                raise CheckpointError(f"{self.iteration_path} holds {key}, a tensor of {what}, which megatron_core "
                                      f"does not build; convert a dense GPT, BERT or T5 model.")
            if not known(ours_from_mcore(key, family)):
                raise CheckpointError(f"{self.iteration_path} holds {key}, which maps to no tensor of the models "
                                      f"megatron_core builds; the checkpoint cannot be read without losing it.")
        tp, pp, _ = parallel_sizes(args, self.iteration_path)
        config = TransformerConfig.from_megatron_flags(args)
        self._tensors = checkpoint.tensors
        self._theirs: Dict[str, str] = {ours_from_mcore(key, family): key for key in names}
        gated = config.activation in GATED_ACTIVATIONS
        self.owners = {ours: Owner(0, "model", ours, spec_of(ours, gated)) for ours in self._theirs}
        table = self._theirs.get("embedding.word_embeddings.weight")
        padded = args.get("padded_vocab_size") or (self._tensors.shape(table)[0] if table else None)
        self.head = contents_head(args, config, family, float(common.get("checkpoint_version") or 3.0),
                                  common.get("iteration", self.iteration))
        if family == "t5":      # Megatron-LM's T5 head has its vocabulary bias when tied (our t5_lm_head_bias)
            self.head["args"]["t5_lm_head_bias"] = "output_layer.bias" in self._theirs
        self.head.update(padded_vocab_size=padded, vocab_size=args.get("vocab_size") or padded,
                         parallel=parallel_record(args, 1, 1, None, TORCH_DIST),
                         megatron_lm_skipped_entries=checkpoint.extra_states_skipped)
        self.head["parallel"]["saved_as"] = [tp, pp]
        self._optimizer = checkpoint.optimizer_tensors
        self._step = _common_step(common.get("optimizer"))
        sharding = _distributed_sharding(common)
        if sharding is not None and sharding not in READ_SHARDING_TYPES:
            self._optimizer, self._step = {}, None
            self.head["parallel"][OPTIMIZER_UNREADABLE] = (
                f"{self.iteration_path} holds a distributed optimizer's state in megatron-core's {sharding!r} "
                f"sharding type, which is read only as {' or '.join(READ_SHARDING_TYPES)}; save it in Megatron-LM "
                f"with --dist-ckpt-optim-fully-reshardable, or load the weights alone with --no-load-optim "
                f"(or --finetune).")
        if self.has_optimizer():
            self.head["parallel"].update(optimizer_dropped=False, optimizer_per_parameter=True)
        if isinstance(common.get("opt_param_scheduler"), dict):
            self.head["opt_param_scheduler"] = dict(common["opt_param_scheduler"])
        self.parallel = self.head["parallel"]
        self.tp = self.pp = 1
        self.maps = {(0, "model"): ShardingMap({k: o.spec for k, o in self.owners.items()}, 1, padded,
                                               self.head["vocab_size"], {})}
        self.files = _WholeTensors()
        self._last = (None, None)
        self._last_fields = (None, None)

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

    # --- optimizer (source.py's face; one tensor-parallel rank, so tensor_rank is 0) ----------
    def has_optimizer(self) -> bool:
        return "exp_avg" in self._optimizer and self._step is not None

    def _optimizer_key(self, saved: str, name: str) -> Optional[str]:
        """The key of `name`'s field `saved` among the optimizer tensors: its own, or the second name
        megatron-core's T5Model gives it (its optimizer keeps the position table's state there only)."""
        theirs, held = self._theirs[self.owner(name).key], self._optimizer.get(saved)
        if held is None:
            return None
        return next((key for key in (theirs, *t5_aliases([theirs])) if key in held), None)

    def has_optimizer_entry(self, name: str) -> bool:
        return self.has_optimizer() and self._optimizer_key("exp_avg", name) is not None

    def optimizer_fields(self, name: str) -> Dict[str, object]:
        """{field: dtype for an element field, the step's value}, from the metadata only."""
        if not self.has_optimizer_entry(name):
            return {}
        theirs = self._theirs[name]
        fields: Dict[str, object] = {ours: self._optimizer[saved].dtype(self._optimizer_key(saved, name))
                                     for saved, ours in _FIELDS.items() if self._optimizer_key(saved, name)}
        if "fp32_master" in fields and self._tensors.dtype(theirs) == torch.float32:
            del fields["fp32_master"]     # an fp32 model's weights are its masters already
        fields["step"] = self._step.clone()      # each parameter's own: Adam adds to it in place
        return fields

    def optimizer_pieces(self, name: str, tensor_rank: int) -> Tuple[torch.Size, Dict[str, object]]:
        """(the parameter's shape, {field: [(0, numel, flat elements)], "step": value}); the
        fields of one parameter are read at once and kept until another is asked for."""
        if self._last_fields[0] != name:
            if not self.has_optimizer_entry(name):
                raise CheckpointError(f"the optimizer state of {self.iteration_path} has no entry for {name!r}; "
                                      f"load it with --no-load-optim (or reshard it with --no-optim).")
            theirs = self._theirs[name]
            shape = self._tensors.shape(theirs)
            fields: Dict[str, object] = {}
            for field, kind in self.optimizer_fields(name).items():
                if isinstance(kind, torch.dtype):
                    saved = next(s for s, ours in _FIELDS.items() if ours == field and self._optimizer_key(s, name))
                    fields[field] = [(0, shape.numel(),
                                      self._optimizer[saved][self._optimizer_key(saved, name)].reshape(-1))]
                else:
                    fields[field] = kind
            self._last_fields = (name, (shape, fields))
        return self._last_fields[1]

    def optimizer_field(self, name: str, tensor_rank: int, field: str, scratch=None) -> torch.Tensor:
        """Element field `field` of `name`'s optimizer state, in the parameter's shape."""
        shape, fields = self.optimizer_pieces(name, tensor_rank)
        return fields[field][0][2].view(shape)


# Megatron-LM's field names (after `optimizer.state.`) and ours.
_FIELDS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "fp32_param": "fp32_master", "param": "fp32_master"}
# the distributed optimizer's sharding types read here: model space, whole tensors
READ_SHARDING_TYPES = ("fully_reshardable",)


def _distributed_sharding(common: Mapping) -> Optional[str]:
    """The distributed optimizer's sharding type a checkpoint was saved with; None for none."""
    saved = common.get("optimizer")
    if isinstance(saved, Mapping) and saved.get("param_state_sharding_type"):
        return str(saved["param_state_sharding_type"])
    return None


def _common_step(saved: object) -> Optional[torch.Tensor]:
    """Adam's step in common.pt's `optimizer` entry: `state.common_step`, found at whatever depth a
    mixed-precision or chained optimizer nests the inner state dict; None when there is none."""
    if not isinstance(saved, Mapping):
        return None
    if saved.get("param_state_sharding_type"):      # the distributed optimizer: each param group's step
        groups = (saved.get("optimizer") or {}).get("param_groups") or []
        steps = {float(g["step"]) for g in groups if isinstance(g, Mapping) and g.get("step") is not None}
        return torch.tensor(steps.pop()) if len(steps) == 1 else None
    state = saved.get("state")
    if isinstance(state, Mapping) and "common_step" in state:
        step = state["common_step"]
        return step.detach().clone() if isinstance(step, torch.Tensor) else torch.tensor(float(step))
    for value in saved.values():
        step = _common_step(value)
        if step is not None:
            return step
    return None


def open_source(directory: str, preferred: str = "megatron", verify: Optional[Verification] = Verification(),
                **options):
    """The resharder's source for a checkpoint directory: Megatron-LM's torch_dist, or ours
    (either layout, Megatron-LM's torch files included: SavedCheckpoint). verify: what is
    checked against the checkpoint's manifest before any file is read (manifest.py; nothing
    without one); None when the caller checked it already."""
    torch_dist = torch_dist_directory(directory)
    if torch_dist is not None:
        check_intact(torch_dist, verify)
        return TorchDistSource(torch_dist)
    return SavedCheckpoint(directory, preferred, verify=verify, **options)


def checkpoint_iteration_path(directory: str, preferred: str = "megatron") -> str:
    """The iteration directory open_source(directory) reads (to verify it before opening it)."""
    torch_dist = torch_dist_directory(directory)
    if torch_dist is not None:
        return torch_dist
    layout, root, iteration = locate(directory, preferred)
    return layout.iteration_dir(root, iteration)
