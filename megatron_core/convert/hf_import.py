"""An HF model directory -> our checkpoint at any TP x PP, in either layout.

    summary = import_checkpoint("hf_dir/", "ckpt/", tensor_model_parallel_size=2)
    # then: pretrain_gpt.py --load ckpt/ --finetune --use-checkpoint-args ... trains it

Weights are read lazily from model.safetensors (or the shards a model.safetensors.index.json
names; safe_open, one tensor at a time), or from pytorch_model.bin with
torch.load(weights_only=True): no code from the file runs. They are converted one HF layer
at a time as the writer asks for our keys (streamed_import.py) and written file by file,
each tensor cut to that file's TP shard (weights_checkpoint.py).
The registry maps config.json and the weights to our family; the vocabulary is padded as the
training loop pads it for that TP size (Megatron's rule, --make-vocab-size-divisible-by x TP),
so the entry points build tables of the stored size. Our model is never built with its
weights: its keys and sharding map come from a meta-device build, and the parameters the HF
class lacks (the MLM head of a BertModel) get our initialization by building only their
components (transformer/meta_build.py), with the values a whole TP=1 build gives them. Peak
memory is one HF layer window plus one output file. The tokenizer files are copied into
`<output>/tokenizer/` and the args name them.
"""
from __future__ import annotations

import json
import os
from collections import ChainMap
from typing import Mapping, Optional

import torch

from ..errors import ConversionError
from ..mpu.layout import pad_vocab_size
from ..checkpoint.file_io import load_file
from ..checkpoint.weights_checkpoint import serial_world, write_weights_checkpoint
from ..transformer.meta_build import materialize, meta_state_dict
from .checkpoint_spec import args_record
from ..models.hf.registry import mapping_for_hf_config
from ..models.registry import family_of_hf_mapping
from .safetensors_files import INDEX_FILE, SINGLE_FILE, SafetensorsWeights
from .hf_streamed_import import StreamedImport
from .hf_tokenizer_files import tokenizer_flags_from_hf


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{hf_dir} has no config.json; pass a directory written by save_pretrained.")
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as error:
            raise ConversionError(f"{path} is not valid JSON ({error}); fix or re-save it.") from None


def _position_ids(key: str) -> bool:
    # older transformers saved the position_ids buffer (an arange, not a weight); HF itself ignores it
    return key.endswith("embeddings.position_ids")


def read_hf_weights(hf_dir: str) -> Mapping[str, torch.Tensor]:
    """The HF state dict of a save_pretrained directory: safetensors (sharded or not) as a
    lazy Mapping (each tensor read when asked for), else a pytorch_model.bin (weights_only)."""
    if os.path.isfile(os.path.join(hf_dir, SINGLE_FILE)) or os.path.isfile(os.path.join(hf_dir, INDEX_FILE)):
        return SafetensorsWeights(hf_dir, skip=_position_ids)
    binary = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.isfile(binary):
        return {k: v for k, v in load_file(binary).items() if not _position_ids(k)}
    raise ConversionError(f"{hf_dir} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin; "
                          f"pass a directory written by save_pretrained.")


def _tokenizer_note(tokenizer_args: dict, vocab_size: int, divisible_by: int, tp: int) -> Optional[str]:
    """The entry points pad the tokenizer's vocabulary, not config.json's: say so when they differ."""
    if not tokenizer_args:
        return "no tokenizer files found; give the entry points --tokenizer-type and its files"
    from ..data.tokenizers.factory import build_tokenizer
    ours = build_tokenizer(tokenizer_args["tokenizer_type"], vocab_file=tokenizer_args.get("vocab_file"),
                           merge_file=tokenizer_args.get("merge_file"),
                           tokenizer_model=tokenizer_args.get("tokenizer_model")).vocab_size
    if pad_vocab_size(ours, divisible_by, tp) != pad_vocab_size(vocab_size, divisible_by, tp):
        return (f"the tokenizer has {ours} tokens but config.json's vocab_size is {vocab_size}; the entry points "
                f"pad the tokenizer's size, so give them a tokenizer of {vocab_size} tokens")
    return None


def import_checkpoint(hf_dir: str, output: str, tensor_model_parallel_size: int = 1,
                      pipeline_model_parallel_size: int = 1, ckpt_format: str = "megatron",
                      make_vocab_size_divisible_by: int = 128, architecture: Optional[str] = None,
                      flag_defaults: Optional[Mapping] = None) -> dict:
    """Write our checkpoint of the HF model in hf_dir to `output`; returns what was written.
    `flag_defaults`: every entry point flag at its default (training.arguments.default_args_record),
    recorded under the model's own values as a pretraining run records its args."""
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    config_json = read_hf_config(hf_dir)
    if architecture:
        config_json = dict(config_json, architectures=[architecture])
    mapping = mapping_for_hf_config(config_json)
    vocab_size = config_json["vocab_size"]
    padded = pad_vocab_size(vocab_size, make_vocab_size_divisible_by, tp)
    spec = mapping.config_from_hf(config_json, padded_vocab_size=padded,
                                  make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    spec.config.replace(tensor_model_parallel_size=tp)   # one sentence now if the heads do not split over tp
    if spec.family == "t5" and pp > 1:
        raise ConversionError("importing T5 at a pipeline-parallel size above 1 needs the encoder/decoder split rank, "
                              "which this converter does not take; import at --pipeline-model-parallel-size 1 and "
                              "reshard with tools/change_mp.py.")
    if spec.config.num_layers % pp:
        raise ConversionError(f"the model has {spec.config.num_layers} layers, which do not split over {pp} pipeline "
                              f"stages; pick a --pipeline-model-parallel-size that divides it.")
    # our weights are converted from the HF files one window (layer) at a time, as the writer asks
    ours = StreamedImport(mapping, spec, read_hf_weights(hf_dir))
    tokenizer_args = tokenizer_flags_from_hf(hf_dir, os.path.join(output, "tokenizer"))
    note = _tokenizer_note(tokenizer_args, vocab_size, make_vocab_size_divisible_by, tp)
    record = args_record(spec, tokenizer_args, flag_defaults or {})
    # the HF class and mapping it came from (llama, megatron_bert: architectures of our family, not families)
    record.update(hf_architecture=spec.architecture, hf_mapping=spec.family)
    family = family_of_hf_mapping(spec.family).name     # ours: llama is gpt, megatron_bert is bert
    build = lambda: mapping.build_model(spec)   # noqa: E731
    with serial_world():
        # Our keys from a meta-device build (no weights); parameters the HF class lacks (the MLM
        # head of a BertModel) get our initialization: only their components are built for real.
        whole = meta_state_dict(build).keys()
        kept = sorted(set(whole) - set(ours))
        unexpected = sorted(set(ours) - set(whole))
        if unexpected:
            raise ConversionError(f"the converted weights have keys our {spec.family} model lacks: {unexpected[:3]}; "
                                  f"the mapping and the model disagree, please report it.")
        initialized = materialize(build, kept)
        written = write_weights_checkpoint(output, ChainMap(initialized, ours),
                                           lambda stage: mapping.build_model(spec, stage=stage), record,
                                           spec.config, vocab_size, padded, tp, pp, ckpt_format,
                                           family=family, model_options=dict(spec.model_kwargs))
    return {"family": family, "hf_mapping": spec.family, "architecture": spec.architecture, "directory": written,
            "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp, "layout": ckpt_format,
            "vocab_size": vocab_size, "padded_vocab_size": padded, "initialized_keys": kept,
            "tokenizer": tokenizer_args.get("tokenizer_type"), **({"note": note} if note else {})}
