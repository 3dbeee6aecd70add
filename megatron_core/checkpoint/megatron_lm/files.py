"""One Megatron-LM `torch`-format rank file as this package's checkpoint contents.

    if written_by_megatron_lm(raw):
        state = our_contents(raw, path)      # what contents.py describes, read by every loader

Megatron-LM writes `iter_NNNNNNN/mp_rank_XX[_YYY]/model_optim_rng.pt` in the directory layout
ours uses, but with its own names (key_names.py), its args as a Namespace (args.py), no
sharding map and no record of the model family. This module makes those from what the file
and its args say, so --load, change_mp, convert_checkpoint and generate_text read a
Megatron-LM checkpoint at any saved TP x PP and reshard it as they reshard ours:

  model / model0..   tensors renamed to ours (views of the mapped file: nothing is copied,
                     except a legacy file's QKV rows of checkpoint_version < 2, put in order);
                     `_extra_state` entries (Transformer Engine's fp8 metadata) are dropped
  sharding_map       each tensor's split by the kind of Megatron-LM module that holds it:
                     column-parallel (QKV, fc1 -- stride 2 when gated --, the word table, the
                     output layer, BERT's output bias: dim 0), row-parallel weights (dim 1),
                     everything else replicated; layer offsets from the pipeline rank (and
                     virtual chunk: chunk j of rank r is stage j * PP + r, as megatron-core numbers
                     it); a chunk that is not its even share of the layers (a custom
                     --pipeline-model-parallel-layout) is refused, since those offsets would not
                     hold; a tied last stage's output table is a copy of the word table
  args, model_config the args as plain values; TransformerConfig.from_megatron_flags of them
  model_family       gpt, bert or t5 from the tensor names (the family's builder options then
                     come from the args, as for our older files)
  parallel           TP, PP, virtual PP (which must be the file's count of model0, model1, ...),
                     DP and the distributed-optimizer setting of the args

The optimizer state of a plain (not distributed) optimizer is carried per parameter
(per_parameter_state), as a resharded checkpoint of ours carries it, so a resumed run goes on
with Megatron-LM's Adam moments and masters at any sizes; --finetune and --no-load-optim drop
it. Its positions are taken in the model's named_parameters order: a megatron-core file's model
dict is in it, a legacy file's is put in it (parameter_order.py; a BERT last stage nests its
word_embeddings_for_head after the heads). A legacy QKV's moments and masters of
checkpoint_version < 2.0 get the row order its weight gets. A distributed optimizer's elements
(distrib_optim.pt beside the rank file, gathered to data-parallel rank 0) are carried the same
way (distrib_optim.py), at any saved DP size.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ...errors import CheckpointError
from ...mpu.sharding_map import ShardingMap, ShardSpec
from ...transformer.config import GATED_ACTIVATIONS, TransformerConfig
from ..contents import FORMAT_VERSION, PER_PARAMETER
from ..file_io import load_file
from .args import ALLOWED_GLOBALS, check_supported, parallel_sizes, plain_args
from .distrib_optim import distributed_optimizer_state
from .key_names import (LEGACY, alias_of, flatten, is_extra_state, known, our_key, qkv_rows_to_current, style_of,
                        unsupported_feature)
from .optimizer import per_parameter_state
from .parameter_order import legacy_parameter_order

FORMAT_MARK = "megatron_lm"          # parallel record entry: the file was read from Megatron-LM's format
OPTIMIZER_UNREADABLE = "optimizer_unreadable"   # parallel record entry: why its optimizer state cannot be read
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")
_CHUNK = re.compile(r"^model\d*$")
_LAYER = re.compile(r"^(?:encoder|decoder)\.layers\.(\d+)\.")


def written_by_megatron_lm(state: Mapping) -> bool:
    """Megatron-LM's files pickle their args as a Namespace (ours keep plain values) and carry
    checkpoint_version but not our format_version."""
    return ("checkpoint_version" in state and "format_version" not in state
            and isinstance(state.get("args"), argparse.Namespace))


def _ranks(path: str) -> Tuple[int, int]:
    match = _RANK_DIR.match(os.path.basename(os.path.dirname(path)))
    if match is None:
        raise CheckpointError(f"{path} is not in an mp_rank_XX or mp_rank_XX_YYY directory, so its tensor- and "
                              f"pipeline-parallel ranks are unknown; keep Megatron-LM's directory names.")
    return int(match.group(1)), int(match.group(2) or 0)


def spec_of(key: str, gated: bool) -> ShardSpec:
    """How Megatron-LM's module splits our key `key` over the tensor-parallel ranks."""
    if key.endswith("word_embeddings.weight") or key in ("output_layer.weight", "output_layer.bias", "lm_head.bias"):
        return ShardSpec(split_dim=0, vocab=True)
    if re.search(r"\.(self_attention\.query_key_value|inter_attention\.(query|key_value))\.(weight|bias)$", key):
        return ShardSpec(split_dim=0)
    if re.search(r"\.mlp\.dense_h_to_4h\.(weight|bias)$", key):
        return ShardSpec(split_dim=0, stride=2 if gated else 1)
    if re.search(r"\.(self_attention\.dense|inter_attention\.dense|mlp\.dense_4h_to_h)\.weight$", key):
        return ShardSpec(split_dim=1)
    return ShardSpec()


def family_of_mcore_keys(keys: List[str]) -> str:
    """gpt, bert or t5 of a whole model's megatron-core keys."""
    return _family(keys, "mcore", lambda: [])


def _family(keys: List[str], style: str, sibling_keys) -> str:
    def of(names) -> Optional[str]:
        if any(".inter_attention." in k or ".cross_attention." in k or k.startswith("language_model.decoder.")
               for k in names) or (any(k.startswith("encoder.") for k in names)
                                   and any(k.startswith("decoder.") for k in names)):
            return "t5"
        if any(k.startswith(("lm_head.", "binary_head.", "pooler.", "language_model.pooler."))
               or "tokentype_embeddings" in k for k in names):
            return "bert"
        if style != LEGACY and any(k.startswith("encoder.layers.") for k in names):
            return "bert"
        if style != LEGACY and any(k.startswith("decoder.") for k in names):
            return "gpt"
        return None
    found = of(keys)
    if found is None and style == LEGACY:
        found = of(sibling_keys())      # a legacy middle stage: the last stage's heads say BERT or GPT
    return found or "gpt"


def _sibling_keys(path: str, tp_rank: int, pp: int):
    def keys():
        if pp == 1:
            return []
        other = os.path.join(os.path.dirname(os.path.dirname(path)), f"mp_rank_{tp_rank:02d}_{pp - 1:03d}",
                             os.path.basename(path))
        if not os.path.isfile(other):
            return []
        state = load_file(other, mmap=True, allow=ALLOWED_GLOBALS)
        return [k for chunk in state if _CHUNK.match(chunk) for k in flatten(state[chunk])]
    return keys


def _layers_per_chunk(args: Mapping, pp: int, chunks: int, where: str) -> int:
    """Layers of one pipeline chunk (Megatron-LM splits them evenly)."""
    total = int(args["num_layers"])
    if total % (pp * chunks):
        raise CheckpointError(f"{where}: {total} layers do not split evenly over {pp} pipeline stages x {chunks} "
                              f"chunks; megatron_core reads Megatron-LM's even pipeline split only.")
    return total // (pp * chunks)


def _check_even_chunk(state: Mapping, chunk: str, per_chunk: int, args: Mapping, where: str) -> None:
    """The layer offsets assume every chunk holds layers 0..per_chunk-1 of its own; a custom
    --pipeline-model-parallel-layout (2 + 1 + 1 + 0 layers of 4, say) keeps the total even but would
    put layers at wrong global indices, one over another, so it is refused here."""
    held = sorted({int(m.group(1)) for m in map(_LAYER.match, state) if m})
    if held != list(range(per_chunk)):
        layout = args.get("pipeline_model_parallel_layout")
        how = f"its --pipeline-model-parallel-layout {layout!r}" if layout else "an uneven split"
        raise CheckpointError(f"{where}: {chunk} holds {len(held)} layers where an even split of {args['num_layers']} "
                              f"layers gives each pipeline chunk {per_chunk} ({how}); megatron_core reads "
                              f"Megatron-LM's even pipeline split only, so re-split it evenly with Megatron-LM's "
                              f"tools/checkpoint/convert.py first.")


def _chunk_state(raw_chunk: Mapping, args: Mapping, style: str, family: str, version: float, tp: int,
                 where: str) -> Tuple[Dict[str, torch.Tensor], int]:
    stack = "decoder" if family == "gpt" else "encoder"
    state, skipped, names = {}, 0, {}
    heads = int(args["num_attention_heads"]) // tp
    tied = not args.get("untie_embeddings_and_output_weights", False)
    flat = flatten(raw_chunk)
    for name, tensor in flat.items():
        if is_extra_state(name) or tensor is None:
            skipped += 1
            continue
        if family == "t5" and style != LEGACY and alias_of(name) in flat:
            continue                # megatron-core T5's second name of a module: read once
        what = unsupported_feature(name)
        if what:
            raise CheckpointError(f"{where} holds {name}, a tensor of {what}, which megatron_core does not build; "
                                  f"convert a dense GPT, BERT or T5 model.")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{where}: model entry {name} is a {type(tensor).__name__}, not a tensor; the file "
                                  f"is damaged or not Megatron-LM's.")
        key = our_key(name, style, stack, family)
        if not known(key):
            raise CheckpointError(f"{where} holds {name}, which maps to no tensor of a {family} model here (read as "
                                  f"{key}); it is a module megatron_core does not build, so the checkpoint cannot "
                                  f"be read without losing it.")
        if style == LEGACY and ".query_key_value." in key and version < 2.0:
            tensor = qkv_rows_to_current(tensor, version, heads)
        state[key] = tensor
        names[name] = key
    if tied and "output_layer.weight" in state and "embedding.word_embeddings.weight" not in state:
        state["word_embeddings.weight"] = state.pop("output_layer.weight")   # megatron-core's tied last stage
        names = {theirs: ("word_embeddings.weight" if ours == "output_layer.weight" else ours)
                 for theirs, ours in names.items()}
    return state, skipped, names


def _chunk_map(state: Mapping[str, torch.Tensor], args: Mapping, config: TransformerConfig, family: str, tp: int,
               offset: int, padded_vocab_size: int) -> ShardingMap:
    gated = config.activation in GATED_ACTIVATIONS
    tensors = {}
    for key in state:
        spec = spec_of(key, gated)
        if key == "word_embeddings.weight":
            spec = ShardSpec(split_dim=0, vocab=True, copy_of="embedding.word_embeddings.weight")
        tensors[key] = spec
    stacks = {m.group(1) for m in (re.match(r"^((?:encoder|decoder)\.layers)\.\d+\.", k) for k in state) if m}
    return ShardingMap(tensors, tp, padded_vocab_size, args.get("vocab_size"), {s: offset for s in sorted(stacks)})


def _qkv_fields_to_current(per_parameter: Mapping, version: float, heads: int) -> None:
    """Adam's moments and masters of a fused QKV keep its weight's rows, so an old legacy file's
    (checkpoint_version < 2.0) are put in the current order as its weight and bias are (_chunk_state)."""
    for by_key in per_parameter.values():
        for key, fields in by_key.items():
            if ".query_key_value." in key:
                fields.update({field: qkv_rows_to_current(value, version, heads) for field, value in fields.items()
                               if isinstance(value, torch.Tensor) and value.dim() > 0})


def contents_head(args: Mapping, config: TransformerConfig, family: str, version: float, iteration) -> Dict:
    """The counters, args, config and family entries of our contents, from Megatron-LM's args."""
    return {"checkpoint_version": version, "format_version": FORMAT_VERSION, "iteration": int(iteration or 0),
            "consumed_train_samples": int(args.get("consumed_train_samples") or 0),
            "consumed_valid_samples": int(args.get("consumed_valid_samples") or 0),
            "args": dict(args), "model_config": config.to_dict(), "model_family": family, "rng_state": []}


def parallel_record(args: Mapping, tp: int, pp: int, virtual, origin: str) -> Dict:
    """Our `parallel` entry; `origin` (FORMAT_MARK) names Megatron-LM's format or key names it came in."""
    world = args.get("world_size")
    data_parallel = args.get("data_parallel_size") or (world // (tp * pp) if world else 1)
    return {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
            "virtual_pipeline_model_parallel_size": virtual, "data_parallel_size": data_parallel,
            "use_distributed_optimizer": bool(args.get("use_distributed_optimizer")),
            "optimizer_dropped": True, FORMAT_MARK: origin}


def our_contents(raw: Mapping, path: str) -> Dict:
    """`raw` (a Megatron-LM rank file, loaded) as the contents of one of our rank files."""
    where = path
    args = plain_args(raw["args"])
    check_supported(args, where)
    tp, pp, virtual = parallel_sizes(args, where)
    tp_rank, pp_rank = _ranks(path)
    version = float(raw.get("checkpoint_version") or 0)
    chunk_names = sorted((k for k in raw if _CHUNK.match(k)), key=lambda k: int(k[5:] or 0))
    if not chunk_names:
        raise CheckpointError(f"{where} holds no 'model' entry: it is a Megatron-LM optimizer or distributed "
                              f"checkpoint file, not a rank's model file.")
    keys = [k for c in chunk_names for k in flatten(raw[c])]
    style = style_of(keys)
    family = _family(keys, style, _sibling_keys(path, tp_rank, pp))
    if family == "t5" and pp > 1:
        raise CheckpointError(f"{where} is a Megatron-LM T5 checkpoint split over {pp} pipeline stages; megatron_core "
                              f"reads Megatron-LM's T5 at pipeline size 1 only.")
    if len(chunk_names) != (virtual or 1):
        raise CheckpointError(f"{where} holds {len(chunk_names)} model chunks ({', '.join(chunk_names)}) but its args "
                              f"record {virtual or 1} virtual pipeline stages per rank; the file is damaged or its "
                              f"args are not the run's.")
    config = TransformerConfig.from_megatron_flags(args)
    padded = args.get("padded_vocab_size")
    contents = contents_head(args, config, family, version, raw.get("iteration"))
    per_chunk = _layers_per_chunk(args, pp, len(chunk_names), where)
    maps, skipped, parameters = {}, 0, []
    for index, name in enumerate(chunk_names):
        state, dropped, names = _chunk_state(raw[name], args, style, family, version, tp, where)
        if family != "t5":      # T5 (one stage) numbers both stacks' layers from 0
            _check_even_chunk(state, name, per_chunk, args, where)
        skipped += dropped
        # the optimizer's positions follow named_parameters; a legacy file's nesting can differ from it
        in_order = legacy_parameter_order(list(names)) if style == LEGACY else list(names)
        parameters += [(name, names[theirs], state[names[theirs]]) for theirs in in_order]
        if padded is None:
            table = state.get("embedding.word_embeddings.weight", state.get("word_embeddings.weight"))
            padded = None if table is None else table.shape[0] * tp
        offset = (index * pp + pp_rank) * per_chunk if family != "t5" else 0
        contents[name] = state
        maps[name] = _chunk_map(state, args, config, family, tp, offset, padded).to_dict()
    if family == "t5":      # Megatron-LM's T5 head has its vocabulary bias when tied (our t5_lm_head_bias)
        contents["args"]["t5_lm_head_bias"] = any("output_layer.bias" in contents[name] for name in chunk_names)
    contents.update(sharding_map=maps, padded_vocab_size=padded, vocab_size=args.get("vocab_size") or padded,
                    megatron_lm_skipped_entries=skipped,
                    parallel=parallel_record(args, tp, pp, virtual, style))
    if raw.get("optimizer") is not None:
        try:
            if args.get("use_distributed_optimizer"):
                state = distributed_optimizer_state(path, parameters, args, raw["optimizer"], pp_rank)
            else:
                state = per_parameter_state(raw["optimizer"], parameters, where)
        except CheckpointError as error:    # the weights still load (--finetune, --no-load-optim); a
            contents["parallel"][OPTIMIZER_UNREADABLE] = str(error)    # run that wants the state stops on it
        else:
            if style == LEGACY and version < 2.0:
                _qkv_fields_to_current(state, version, int(args["num_attention_heads"]) // tp)
            contents["optimizer"] = {PER_PARAMETER: state}
            contents["parallel"].update(optimizer_dropped=False, optimizer_per_parameter=True)
    if isinstance(raw.get("opt_param_scheduler"), Mapping):
        contents["opt_param_scheduler"] = dict(raw["opt_param_scheduler"])
    return contents


__all__ = ["written_by_megatron_lm", "our_contents", "spec_of", "FORMAT_MARK", "OPTIMIZER_UNREADABLE"]
