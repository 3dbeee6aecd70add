"""The HF mappings by family name: what a checkpoint converter looks up.

    from megatron_core.models.hf.registry import get_mapping, mapping_for_hf_config

    # HF -> ours: config.json (dict) and weights
    mapping = mapping_for_hf_config(config_json)               # by model_type, else architectures
    spec = mapping.config_from_hf(config_json, padded_vocab_size=21248, tensor_model_parallel_size=1)
    model = mapping.build_model(spec)
    model.load_state_dict(mapping.state_dict_from_hf(hf_state_dict, spec))

    # ours -> HF
    mapping = get_mapping("gpt")
    spec = mapping.spec(config, vocab_size=50257, padded_vocab_size=50304, max_sequence_length=1024)
    config_json = mapping.config_to_hf(spec)                   # a plain dict; no transformers needed
    hf_state_dict = mapping.state_dict_to_hf(model.state_dict(), spec)

A ModelSpec (common.py) carries our TransformerConfig, the real and the padded vocabulary
sizes, the HF architecture and our model class's other arguments. The padded size is
always given by the caller (stored with our checkpoint), never derived from a parallel
size: export drops the rows past vocab_size, import appends zero rows up to it. State
dicts are full (TP=1, every pipeline stage).
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

from . import bert, classification, gpt2, llama, megatron_bert, roformer, t5
from .common import ConversionError, HFMapping, ModelSpec

__all__ = ["HFMapping", "ModelSpec", "get_mapping", "mapping_for_hf_config", "registered_families"]

_MAPPINGS: Dict[str, HFMapping] = {m.name: m for m in (gpt2.MAPPING, llama.MAPPING, bert.MAPPING,
                                                        megatron_bert.MAPPING, roformer.MAPPING, t5.MAPPING,
                                                        *classification.MAPPINGS)}


def registered_families() -> Tuple[str, ...]:
    """Our family names that have an HF mapping."""
    return tuple(_MAPPINGS)


def _supported() -> str:
    return ", ".join(f"{m.model_type} ({'/'.join(m.architectures)})" for m in _MAPPINGS.values())


def get_mapping(name: str) -> HFMapping:
    """The mapping of one of our families ("gpt", "llama", "bert", "megatron_bert", "roformer", "t5")."""
    if name not in _MAPPINGS:
        raise ConversionError(f"no HF mapping for model family {name!r}; the families with one are "
                              f"{', '.join(_MAPPINGS)}.")
    return _MAPPINGS[name]


def mapping_for_hf_config(hf_config) -> HFMapping:
    """The mapping for an HF config.json dict (or transformers config): by model_type, else by
    the class names in `architectures`."""
    values = hf_config if isinstance(hf_config, Mapping) else vars(hf_config)
    model_type = values.get("model_type") or getattr(hf_config, "model_type", None)
    architectures = list(values.get("architectures") or [])
    for mapping in classification.MAPPINGS:     # a classifier shares its model_type with the base model
        if model_type in (None, mapping.model_type) and any(a in mapping.architectures for a in architectures):
            return mapping
    for mapping in _MAPPINGS.values():
        if model_type == mapping.model_type:
            return mapping
    architectures = list(values.get("architectures") or [])
    if not model_type:
        for mapping in _MAPPINGS.values():
            if any(name in mapping.architectures for name in architectures):
                return mapping
    raise ConversionError(f"the HF config has model_type {model_type!r} (architectures {architectures}), which has "
                          f"no mapping here; supported: {_supported()}.")
