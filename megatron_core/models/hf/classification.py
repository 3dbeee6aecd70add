"""ClassificationModel <-> HF's ...ForSequenceClassification / ...ForMultipleChoice (BERT, MegatronBERT).

    hf_sd = to_hf_state_dict(our_sd, config)              # "bert.*" + "classifier.*"
    our_sd = from_hf_state_dict(hf_sd, config)

The encoder and pooler map as the family's base model does (hf/bert.py, hf/megatron_bert.py:
the layer norm position picks the family); our `classification_head` is HF's `classifier`.
HF's classifiers keep the pooler, dropout and one linear layer, as Megatron's do.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ...transformer.config import TransformerConfig
from ..classification import ClassificationModel
from . import bert as hf_bert
from . import megatron_bert as hf_megatron_bert
from .common import ConversionError, HFMapping, ModelSpec, hf_config_object, model_argument
from .common import hf_architecture as common_hf_architecture

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


# --- the registry's entries: family "classification" -----------------------------------------------------
def _architectures(prefix: str) -> Tuple[str, ...]:
    return (f"{prefix}ForSequenceClassification", f"{prefix}ForMultipleChoice")


def _mapping(name: str, module, prefix: str) -> HFMapping:
    architectures = _architectures(prefix)

    def config_to_hf(spec: ModelSpec) -> dict:
        multiple_choice = bool(spec.model_kwargs.get("multiple_choice"))
        architecture = hf_architecture(spec.config, multiple_choice)
        values = module.hf_config_dict(spec.config, spec.vocab_size,
                                       model_argument(ClassificationModel, spec, "max_sequence_length"),
                                       model_argument(ClassificationModel, spec, "num_tokentypes"), architecture)
        if not multiple_choice:
            labels = spec.model_kwargs.get("labels") or [f"LABEL_{i}" for i in
                                                         range(model_argument(ClassificationModel, spec, "num_classes"))]
            values.update(num_labels=len(labels), id2label={str(i): str(label) for i, label in enumerate(labels)},
                          label2id={str(label): i for i, label in enumerate(labels)})
        return values

    def config_from_hf(hf_config, padded_vocab_size: Optional[int] = None, **overrides) -> ModelSpec:
        hf_config = hf_config_object(hf_config, module.MODEL_TYPE)
        architecture = common_hf_architecture(hf_config, architectures)
        multiple_choice = architecture.endswith("ForMultipleChoice")
        id2label = {int(k): v for k, v in (getattr(hf_config, "id2label", None) or {}).items()}
        labels = [id2label[i] for i in sorted(id2label)] if id2label and not multiple_choice else None
        num_classes = 1 if multiple_choice else int(getattr(hf_config, "num_labels", None) or len(labels or []) or 2)
        return ModelSpec(name, module.from_hf_config(hf_config, **overrides), hf_config.vocab_size,
                         padded_vocab_size or hf_config.vocab_size, architecture,
                         dict(max_sequence_length=hf_config.max_position_embeddings,
                              num_tokentypes=hf_config.type_vocab_size, num_classes=num_classes,
                              multiple_choice=multiple_choice, labels=labels))

    def state_dict_to_hf(our_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
        return to_hf_state_dict(our_sd, spec.config, vocab_size=spec.vocab_size)

    def state_dict_from_hf(hf_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
        return from_hf_state_dict(hf_sd, spec.config, padded_vocab_size=spec.padded_vocab_size)

    return HFMapping(name=name, model_type=module.MODEL_TYPE, architectures=architectures,
                     model_class=ClassificationModel, config_to_hf=config_to_hf, config_from_hf=config_from_hf,
                     state_dict_to_hf=state_dict_to_hf, state_dict_from_hf=state_dict_from_hf)


BERT_MAPPING = _mapping("bert_classification", hf_bert, "Bert")
MEGATRON_BERT_MAPPING = _mapping("megatron_bert_classification", hf_megatron_bert, "MegatronBert")
MAPPINGS = (BERT_MAPPING, MEGATRON_BERT_MAPPING)
CLASSIFIER_ARCHITECTURES = _architectures("Bert") + _architectures("MegatronBert")
