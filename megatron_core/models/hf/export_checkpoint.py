"""Our checkpoint (any TP x PP, either layout) -> an HF model directory.

    summary = export_checkpoint("ckpt/", "out_hf/")
    # out_hf/config.json, model.safetensors, tokenizer files: from_pretrained("out_hf/") works offline

The shards are merged one tensor at a time from mapped files (training/checkpoint/saved_model.py);
the HF state dict is then built by the family's mapping (the registry) and written as one
safetensors file. Every output file is written under a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

from ...errors import ConversionError
from ...training.checkpoint.file_io import write_bytes_atomically
from ...training.checkpoint.saved_model import open_saved_model
from ...transformer.config import TransformerConfig
from .checkpoint_spec import family_of, spec_of_saved
from .registry import get_mapping
from .tokenizer_files import save_hf_tokenizer


def export_checkpoint(load: str, output: str, architecture: Optional[str] = None,
                      tokenizer_overrides: Optional[Mapping] = None) -> dict:
    """Write the HF directory `output` for the checkpoint in `load`; returns what was written."""
    from safetensors.torch import save as safetensors_bytes

    saved = open_saved_model(load)
    config = TransformerConfig.from_dict(saved.model_config).replace(tensor_model_parallel_size=1,
                                                                     sequence_parallel=False)
    if saved.vocab_size is None or saved.padded_vocab_size is None:
        raise ConversionError(f"{saved.path} does not record its vocabulary sizes (vocab_size, padded_vocab_size); "
                              f"it was not written by this package's training loop or converter.")
    args = dict(saved.args, **(tokenizer_overrides or {}))
    family = family_of(list(saved.state), config)
    recorded = args.get("hf_architecture")   # the class an imported model came from, exported back as such
    if architecture is None and recorded in get_mapping(family).architectures:
        architecture = recorded
    spec = spec_of_saved(saved.state, config, saved.vocab_size, saved.padded_vocab_size, args, architecture)
    mapping = get_mapping(spec.family)
    hf_state = mapping.state_dict_to_hf(saved.state, spec)
    config_json = mapping.config_to_hf(spec)
    os.makedirs(output, exist_ok=True)
    write_bytes_atomically(os.path.join(output, "model.safetensors"),
                           safetensors_bytes({k: v.contiguous() for k, v in hf_state.items()},
                                             metadata={"format": "pt"}))
    tensors = len(hf_state)
    del hf_state
    write_bytes_atomically(os.path.join(output, "config.json"),
                           (json.dumps(config_json, indent=2, sort_keys=True) + "\n").encode())
    tokenizer = save_hf_tokenizer(args, spec.family, output)
    return {"family": spec.family, "architecture": spec.architecture, "tensors": tensors,
            "tensor_model_parallel_size": saved.tensor_model_parallel_size,
            "pipeline_model_parallel_size": saved.pipeline_model_parallel_size, "layout": saved.layout,
            "tokenizer": tokenizer, "source": saved.path}
