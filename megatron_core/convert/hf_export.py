"""Our checkpoint (any TP x PP, either layout) -> an HF model directory.

    summary = export_checkpoint("ckpt/", "out_hf/")
    # out_hf/config.json, model.safetensors, tokenizer files: from_pretrained("out_hf/") works offline

The shards are merged one tensor at a time from mapped files (checkpoint/saved_model.py);
the HF tensors are made by the family's mapping (the registry) one window at a time -- the
keys outside the layers, then each layer -- with every key outside the window a meta tensor
(shape only, no data), so the mapping's code is the one for whole state dicts and memory holds
one window plus one output shard, never the model. They are written in safetensors shards of
at most `max_shard_size` (safetensors_files.py: save_pretrained's sharded format). Every
output file is written under a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterator, List, Mapping, Optional, Set, Tuple, Union

import torch

from ..errors import ConversionError
from ..checkpoint.file_io import write_bytes_atomically
from ..checkpoint.manifest import Verification
from ..checkpoint.saved_model import open_saved_model
from ..transformer.config import TransformerConfig
from .checkpoint_spec import hf_mapping_name, spec_of_saved
from .meta_window import MetaWindow
from ..models.hf.registry import get_mapping
from .safetensors_files import DEFAULT_MAX_SHARD_SIZE, parse_shard_size, write_safetensors_shards

_LAYER = re.compile(r"^(.*layers)\.(\d+)\.")
from .hf_tokenizer_files import save_hf_tokenizer


def _whole_shapes(saved) -> Dict[str, Tuple[tuple, torch.dtype]]:
    """Each whole-model key's shape and dtype, from the shard files' indexes (no tensor read)."""
    source, shapes = saved.source, {}
    for name, owner in source.owners.items():
        local = source.weight(name, 0)
        shape = list(local.shape)
        if not owner.spec.replicated:
            shape[owner.spec.split_dim] *= source.tp
        shapes[name] = (tuple(shape), local.dtype)
    return shapes


def _windows(keys) -> List[Set[str]]:
    """Everything outside the layers, then each layer of each stack: the mapping turns one
    window's real tensors into the HF tensors that depend on them alone."""
    layers: Dict[Tuple[str, int], Set[str]] = {}
    rest = set()
    for key in keys:
        match = _LAYER.match(key)
        if match:
            layers.setdefault((match.group(1), int(match.group(2))), set()).add(key)
        else:
            rest.add(key)
    return [rest] + [layers[where] for where in sorted(layers)]


def _hf_tensors(saved, mapping, spec, shapes) -> Iterator[Tuple[str, torch.Tensor]]:
    expected = set(mapping.state_dict_to_hf(MetaWindow(saved.state, shapes, set()), spec))
    produced = set()
    for window in _windows(shapes):
        for key, tensor in mapping.state_dict_to_hf(MetaWindow(saved.state, shapes, window), spec).items():
            if not tensor.is_meta and key not in produced:     # a constant (RoFormer's sinusoid) is real in each
                produced.add(key)
                yield key, tensor
        saved.source.files.release()
    if produced != expected:
        raise ConversionError(f"the {spec.family} mapping gives HF tensors {sorted(expected - produced)[:3]} from "
                              f"more than one layer; export cannot stream it, please report it.")


def export_checkpoint(load: str, output: str, architecture: Optional[str] = None,
                      tokenizer_overrides: Optional[Mapping] = None,
                      max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
                      verify_checksums: bool = True) -> dict:
    """Write the HF directory `output` for the checkpoint in `load`; returns what was written.
    verify_checksums False: only the sizes of its files are checked against its manifest."""
    limit = parse_shard_size(max_shard_size)
    saved = open_saved_model(load, Verification(checksums=verify_checksums, optimizer=False))
    config = TransformerConfig.from_dict(saved.model_config).replace(tensor_model_parallel_size=1,
                                                                     sequence_parallel=False)
    if saved.vocab_size is None or saved.padded_vocab_size is None:
        raise ConversionError(f"{saved.path} does not record its vocabulary sizes (vocab_size, padded_vocab_size); "
                              f"it was not written by this package's training loop or converter.")
    args = dict(saved.args, **(tokenizer_overrides or {}))
    family = saved.family                    # as recorded (a legacy checkpoint's guessed once, one line)
    recorded = args.get("hf_architecture")   # the class an imported model came from, exported back as such
    if architecture is None and recorded in get_mapping(hf_mapping_name(family, config)).architectures:
        architecture = recorded
    shapes = _whole_shapes(saved)
    spec = spec_of_saved(MetaWindow(saved.state, shapes, set()), config, saved.vocab_size, saved.padded_vocab_size, args,
                         architecture, family=family)
    mapping = get_mapping(spec.family)
    config_json = mapping.config_to_hf(spec)
    files = write_safetensors_shards(output, _hf_tensors(saved, mapping, spec, shapes), limit)
    write_bytes_atomically(os.path.join(output, "config.json"),
                           (json.dumps(config_json, indent=2, sort_keys=True) + "\n").encode())
    tokenizer = save_hf_tokenizer(args, spec.family, output)
    return {"family": family, "hf_mapping": spec.family, "architecture": spec.architecture, "files": files,
            "tensor_model_parallel_size": saved.tensor_model_parallel_size,
            "pipeline_model_parallel_size": saved.pipeline_model_parallel_size, "layout": saved.layout,
            "tokenizer": tokenizer, "source": saved.path}
