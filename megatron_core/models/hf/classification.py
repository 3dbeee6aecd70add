"""ClassificationModel <-> HF's ...ForSequenceClassification / ...ForMultipleChoice (BERT, MegatronBERT).

    hf_sd = to_hf_state_dict(our_sd, config)              # "bert.*" + "classifier.*"
    our_sd = from_hf_state_dict(hf_sd, config)

The encoder and pooler map as the family's base model does (hf/bert.py, hf/megatron_bert.py:
the layer norm position picks the family); our `classification_head` is HF's `classifier`.
HF's classifiers keep the pooler, dropout and one linear layer, as Megatron's do.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from . import bert as hf_bert
from . import megatron_bert as hf_megatron_bert
from .common import ConversionError

HEAD = "classification_head."
HF_HEAD = "classifier."


def _family(config: TransformerConfig):
    """(layout, family name, check) of the HF model family of this encoder."""
    if config.layernorm_position == "pre":
        return hf_megatron_bert.LAYOUT, hf_megatron_bert.FAMILY, hf_megatron_bert.check_config
    return hf_bert.BERT_LAYOUT, hf_bert.FAMILY, hf_bert.check_config


def hf_architecture(config: TransformerConfig, multiple_choice: bool = False) -> str:
    base = "MegatronBert" if config.layernorm_position == "pre" else "Bert"
    return f"{base}{'ForMultipleChoice' if multiple_choice else 'ForSequenceClassification'}"


def to_hf_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                     vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    layout, family, check = _family(config)
    check(config)
    head = {k[len(HEAD):]: v for k, v in our_sd.items() if k.startswith(HEAD)}
    if set(head) != {"weight", "bias"}:
        raise ConversionError("the state dict holds no classification_head.weight and .bias; it is not a "
                              "finetuned classifier (convert a pretraining checkpoint as BERT).")
    encoder = {k: v for k, v in our_sd.items() if not k.startswith(HEAD)}
    out = hf_bert.encoder_to_hf(encoder, config, layout, family, True, True, False, False, vocab_size)
    out.update({HF_HEAD + name: tensor for name, tensor in head.items()})
    return out


def from_hf_state_dict(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    layout, family, check = _family(config)
    check(config)
    head = {k[len(HF_HEAD):]: v for k, v in hf_sd.items() if k.startswith(HF_HEAD)}
    if set(head) != {"weight", "bias"}:
        raise ConversionError(f"the {family} state dict holds no classifier.weight and .bias; it is not a "
                              f"...ForSequenceClassification or ...ForMultipleChoice model.")
    encoder = {k: v for k, v in hf_sd.items() if not k.startswith(HF_HEAD)}
    out = hf_bert.encoder_from_hf(encoder, config, layout, family, padded_vocab_size)
    out.update({HEAD + name: tensor for name, tensor in head.items()})
    return out
