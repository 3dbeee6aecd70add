"""Our checkpoint (any TP x PP, either layout) as a checkpoint Megatron-LM loads.

    summary = export_megatron_lm("ckpt/", "megatron_ckpt/", key_names="mcore", fmt="torch",
                                 tensor_model_parallel_size=2, pipeline_model_parallel_size=1)

`fmt="torch_dist"` writes Megatron-LM's default format instead: one directory of
torch.distributed.checkpoint files holding whole tensors under megatron-core's names
(checkpoint/megatron_lm/torch_dist.py), with the same args in common.pt; it loads at any TP x PP.
The rest of this docstring is the `torch` format:

Each target rank's file (`iter_NNNNNNN/mp_rank_XX[_YYY]/model_optim_rng.pt`, or `release/` for a
weights-only checkpoint of ours) holds what Megatron-LM's save_checkpoint writes:

  args                an argparse.Namespace: our args record (our flags are Megatron-LM's names)
                      with the model's flags from its TransformerConfig (megatron_flags), the
                      target sizes, padded_vocab_size, iteration and consumed samples
  checkpoint_version  3.0
  iteration           the saved iteration (0 for a release)
  model | model0..    the rank's tensors under megatron-core's names (`key_names="mcore"`:
                      linear_qkv, linear_proj, pre_mlp_layernorm, linear_fc1/2; a tied last stage's
                      table as output_layer.weight) or legacy nested ones (`"legacy"`:
                      {"language_model": {"embedding": ..., "encoder": ...}}, word_embeddings_for_head)
  opt_param_scheduler our schedule's state (Megatron's keys)
  rng_state           [one dict] in Megatron-LM's form (megatron_lm/rng.py): our Python, numpy and
                      CPU states, CUDA and tracker states seeded as Megatron-LM seeds them

The weights are cut for the target from the memory-mapped source one tensor at a time
(reshard/targets.py); memory holds one output file. The optimizer state, when the checkpoint
has one, is written as Megatron-LM's optimizer saves it (megatron_lm/optimizer.py), its positions
in the named_parameters order of the model the key names belong to (megatron_lm/parameter_order.py:
megatron-core's, or the legacy GPTModel / BertModel / T5Model's, whose nested model dict is written
in that order too), so Megatron-LM's --load resumes it; without one, load it with --finetune or
--no-load-optim. Adam's moments and masters are cut like their weights, so a fused QKV's rows are in
the weight's order (checkpoint_version 3.0: per head [q, k, v]) in both.

GPT (Llama-style too), BERT and T5 (Megatron's: learned positions, one pipeline stage;
megatron-core's second names of its position table and head written too, in torch_dist with their
optimizer state, and a zero LM-head bias for a tied T5 saved without one, whose optimizer state then
stays behind); the other families are one sentence. A training run writes the same torch_dist
directly (checkpoint/torch_dist_files.py, --ckpt-format torch_dist).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, Mapping, Optional

import torch

from ..checkpoint.contents import MEGATRON_CHECKPOINT_VERSION
from ..checkpoint.file_io import save_file, write_bytes_atomically
from ..checkpoint.megatron_lm.args import check_megatron_can_build, megatron_args_of
from ..checkpoint.megatron_lm.distrib_optim import distrib_optim_file, distrib_optim_path
from ..checkpoint.megatron_lm.optimizer import adam_hyperparameters, megatron_optimizer
from ..checkpoint.megatron_lm.parameter_order import legacy_parameter_order, mcore_parameter_order
from ..checkpoint.megatron_lm.rng import megatron_rng_state, torch_dist_rng_object
from ..checkpoint.megatron_lm.key_names import (KEY_STYLES, LEGACY, MCORE, mcore_names, megatron_key, nest,
                                                t5_aliases, with_t5_aliases)
from ..checkpoint.megatron_lm.torch_dist import OPTIMIZER_STATE, write_torch_dist
from ..checkpoint.megatron_layout import MegatronLayout
from ..checkpoint.manifest import Verification
from ..checkpoint.reshard.torch_dist_source import open_source
from ..checkpoint.reshard.stages import target_chunks
from ..checkpoint.saved_model import MergedState
from ..checkpoint.torch_dist_optimizer import RESHARDABLE, SAVED_AS, common_optimizer, content_metadata, layout_for
from ..checkpoint.reshard.targets import target_optimizer_field, target_optimizer_state, target_weight
from ..errors import ConversionError
from ..transformer.config import TransformerConfig

FAMILIES = ("gpt", "bert", "t5")
FORMATS = ("torch", "torch_dist")


def _megatron_name(key: str, style: str, family: str) -> str:
    if key == "word_embeddings.weight":         # our tied last stage's copy of the word table
        return "word_embeddings_for_head.weight" if style == LEGACY else "output_layer.weight"
    return megatron_key(key, style, family)


def _missing_t5_bias(source, family: str) -> bool:
    """A tied T5 of ours saved without Megatron's LM-head bias (the option came later): Megatron-LM's
    T5 has one, so a zero bias (the same logits) is written."""
    return family == "t5" and "output_layer.bias" not in source.owners


class _MegatronCoreNames(Mapping):
    """The whole model under megatron-core's TP=1 names, each tensor merged when asked for; with
    `optimizer`, also each parameter's Adam fields as torch_dist keeps them for the optimizer
    of `layout` (torch_dist_optimizer.py: `optimizer.state.<exp_avg|exp_avg_sq|fp32_param>.<name>`,
    or the distributed optimizer's fully_reshardable `param`, `exp_avg`, `exp_avg_sq`)."""

    def __init__(self, source, optimizer: bool, family: str, layout: str):
        self._source = source
        self._merged = MergedState(source)
        self._entries = {megatron_key(key, MCORE): (key, None) for key in self._merged}
        if _missing_t5_bias(source, family):
            self._entries["output_layer.bias"] = (None, "zeros")
        if family == "t5":
            self._entries.update({alias: self._entries[original] for alias, original in t5_aliases(self._entries).items()})
        if optimizer:
            for key in self._merged:
                fields = source.optimizer_fields(key)
                names = mcore_names(key, family)        # a T5's optimizer asks for either of its names
                for field, saved_as in SAVED_AS[layout].items():
                    if field in fields:
                        self._entries.update({f"{OPTIMIZER_STATE}{saved_as}.{name}": (key, field) for name in names})
                if layout == RESHARDABLE and "fp32_master" not in fields:    # the fp32 main copy: the weights
                    saved_as = SAVED_AS[layout]["fp32_master"]
                    self._entries.update({f"{OPTIMIZER_STATE}{saved_as}.{name}": (key, "weights") for name in names})

    def __getitem__(self, key: str) -> torch.Tensor:
        ours, field = self._entries[key]
        if field is None:
            return self._merged[ours]
        if field == "zeros":
            return torch.zeros(self._source.padded_vocab_size, dtype=self._merged["embedding.word_embeddings.weight"].dtype)
        if field == "weights":
            return self._merged[ours].float()
        spec = self._source.owner(ours).spec
        return target_optimizer_field(self._source, ours, spec, field, 0, 1, self._source.padded_vocab_size)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _common_optimizer(source, hyper: Mapping, mixed_precision: bool, layout: str) -> Dict:
    name = next(iter(source.owners))
    return common_optimizer(float(source.optimizer_fields(name).get("step", 0.0)), hyper, mixed_precision, layout)


def _rng_objects(source, namespace) -> Dict[str, object]:
    """Megatron-LM's rng_state sharded objects, one per (TP, PP) rank of the args' sizes."""
    tp, pp = namespace.tensor_model_parallel_size, namespace.pipeline_model_parallel_size
    saved, seed = list(source.head.get("rng_state") or []), int(getattr(namespace, "seed", None) or 1234)
    objects: Dict[str, object] = {}
    for p in range(pp):
        for t in range(tp):
            objects.update(torch_dist_rng_object(saved, seed, t, tp, p, pp))
    return objects


def _write_torch_dist(source, output: str, namespace, hyper: Mapping, mixed_precision: bool, family: str,
                      progress) -> bool:
    """Megatron-LM's torch_dist directory of the whole model (torch.distributed.checkpoint, one
    process), with the optimizer state when the checkpoint has one; whether it had."""
    # the layout of the optimizer Megatron-LM's run builds: its distributed optimizer's if the args say so
    layout = layout_for(bool(getattr(namespace, "use_distributed_optimizer", False)))
    common = {"args": namespace, "checkpoint_version": MEGATRON_CHECKPOINT_VERSION, "iteration": namespace.iteration,
              "opt_param_scheduler": dict(source.head.get("opt_param_scheduler") or {}),
              "content_metadata": content_metadata(layout)}
    with_optimizer = source.has_optimizer() and not _missing_t5_bias(source, family)
    if with_optimizer:
        common["optimizer"] = _common_optimizer(source, hyper, mixed_precision, layout)
    objects = _rng_objects(source, namespace)
    if source.iteration is None:        # a weights-only checkpoint of ours: Megatron-LM's release directory
        directory = os.path.join(output, "release")
        write_torch_dist(directory, _MegatronCoreNames(source, with_optimizer, family, layout), common, write_tracker=False,
                         objects=objects)
        write_bytes_atomically(os.path.join(output, MegatronLayout.tracker_name), b"release\n")
    else:
        directory = os.path.join(output, f"iter_{source.iteration:07d}")
        write_torch_dist(directory, _MegatronCoreNames(source, with_optimizer, family, layout), common, iteration=source.iteration,
                         objects=objects)
    progress(f"  wrote {directory}")
    return with_optimizer


def export_megatron_lm(load: str, output: str, key_names: str = "mcore", fmt: str = "torch",
                       tensor_model_parallel_size: Optional[int] = None,
                       pipeline_model_parallel_size: Optional[int] = None,
                       progress: Callable[[str], None] = print, verify_checksums: bool = True) -> Dict:
    """verify_checksums False: only the sizes of the checkpoint's files are checked against its manifest."""
    if key_names not in KEY_STYLES:
        raise ConversionError(f"--key-names {key_names} is unknown; use {' or '.join(KEY_STYLES)}.")
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt} is unknown; use {' or '.join(FORMATS)}.")
    if fmt == "torch_dist" and key_names != MCORE:
        raise ConversionError("--format torch_dist is megatron-core's format and has megatron-core's names only; "
                              "drop --key-names legacy, or write --format torch.")
    source = open_source(load, verify=Verification(checksums=verify_checksums))
    family = source.head.get("model_family")
    if family not in FAMILIES:
        raise ConversionError(f"{source.iteration_path} holds a {family} model; --to-megatron-lm writes "
                              f"{', '.join(FAMILIES)} models (Llama-style GPT included).")
    tp = tensor_model_parallel_size or source.tp
    pp = pipeline_model_parallel_size or source.pp
    if family == "t5":
        pp = pipeline_model_parallel_size or 1
        if pp != 1:
            raise ConversionError(f"--to-megatron-lm writes a T5 as one pipeline stage (Megatron-LM's T5 runs no "
                                  f"pipeline split), not {pp}; drop --pipeline-model-parallel-size.")
    padded = source.padded_vocab_size
    if padded % tp:
        raise ConversionError(f"the padded vocabulary of {source.iteration_path} ({padded} rows) does not split over "
                              f"{tp} tensor-parallel ranks; pick a TP size that divides it, or re-pad it first with "
                              f"tools/change_mp.py --make-vocab-size-divisible-by.")
    if os.path.abspath(output) in (os.path.abspath(source.root), os.path.abspath(source.iteration_path)):
        raise ConversionError(f"--to-megatron-lm {output} is the checkpoint being read; write to a new directory.")
    config = TransformerConfig.from_dict(source.head["model_config"])
    check_megatron_can_build(config, source.iteration_path)
    namespace = megatron_args_of(source.head, config, tp, pp, padded)
    hyper = adam_hyperparameters(source.head.get("args") or {})
    mixed_precision = config.params_dtype != torch.float32
    if fmt == "torch_dist":
        written = _write_torch_dist(source, output, namespace, hyper, mixed_precision, family, progress)
        return {"family": family, "key_names": key_names, "format": fmt, "iteration": source.iteration,
                "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp, "padded_vocab_size": padded,
                "source": source.iteration_path, "optimizer": written}
    layout = MegatronLayout()
    chunks = target_chunks(source, tp, pp, padded, None)
    zero_bias = _missing_t5_bias(source, family)
    with_optimizer = source.has_optimizer() and not zero_bias
    if source.has_optimizer() and not with_optimizer:
        progress("note: the zero LM-head bias Megatron-LM's T5 adds has no optimizer state; this checkpoint goes "
                 "without its optimizer state (load it in Megatron-LM with --finetune or --no-load-optim).")
    in_order = legacy_parameter_order if key_names == LEGACY else mcore_parameter_order
    # a run of the distributed optimizer (its args say so) loads its elements from distrib_optim.pt
    distributed = bool(getattr(namespace, "use_distributed_optimizer", False))
    step = float(source.optimizer_fields(next(iter(source.owners))).get("step", 0.0)) if with_optimizer else 0.0
    saved_rng = list(source.head.get("rng_state") or [])
    seed = int((source.head.get("args") or {}).get("seed") or 1234)
    for p in range(pp):
        mine = [c for c in chunks if c.pipeline_rank == p]
        for t in range(tp):
            state = {"args": namespace, "checkpoint_version": MEGATRON_CHECKPOINT_VERSION,
                     "iteration": namespace.iteration, "rng_state": megatron_rng_state(saved_rng, seed, t, p),
                     "opt_param_scheduler": dict(source.head.get("opt_param_scheduler") or {})}
            by_chunk = []         # each chunk's (name, weight, fields): the optimizer's positions, in order
            for chunk in mine:
                tensors, fields = {}, {}
                for local, (whole, spec) in chunk.entries.items():
                    name = _megatron_name(local, key_names, family)
                    tensors[name] = target_weight(source, whole, spec, t, tp, padded)
                    if with_optimizer:
                        fields[name] = target_optimizer_state(source, whole, spec, t, tp, padded)
                if zero_bias:
                    table = tensors[_megatron_name("embedding.word_embeddings.weight", key_names, family)]
                    tensors[_megatron_name("output_layer.bias", key_names, family)] = table.new_zeros(padded // tp)
                # the model's named_parameters order: the optimizer numbers its positions in it, and a
                # legacy file's nested dict follows it too (megatron-core's keys stay as they come)
                order = in_order(list(tensors))
                by_chunk.append([(name, tensors[name], fields[name]) for name in order if name in fields])
                if key_names == LEGACY:
                    state[chunk.chunk] = nest({name: tensors[name] for name in order})
                else:
                    state[chunk.chunk] = with_t5_aliases(tensors) if family == "t5" else tensors
            path = layout.model_file(output, source.iteration, t, tp, p, pp)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if with_optimizer and distributed:      # the param groups here, the elements beside
                state["optimizer"] = {"optimizer": common_optimizer(step, hyper, mixed_precision, RESHARDABLE)[
                    "optimizer"]}
                save_file(distrib_optim_file(by_chunk, vars(namespace), p), distrib_optim_path(path))
            elif with_optimizer:
                state["optimizer"] = megatron_optimizer([entry for members in by_chunk for entry in members], hyper,
                                                        mixed_precision)
            save_file(state, path)
            progress(f"  wrote {path}")
    tracker = "release" if source.iteration is None else str(source.iteration)
    write_bytes_atomically(os.path.join(output, layout.tracker_name), (tracker + "\n").encode())
    source.files.release()
    return {"family": family, "key_names": key_names, "format": fmt, "iteration": source.iteration,
            "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp, "padded_vocab_size": padded,
            "source": source.iteration_path, "optimizer": with_optimizer}
