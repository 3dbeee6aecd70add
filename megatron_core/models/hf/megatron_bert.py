"""MegatronBertForPreTraining (HF transformers) <-> our BertModel, pre-LN MegatronBERT layout.

The layout of NVIDIA's Megatron BERT and IDEA's Erlangshen-MegatronBert-1.3B: no norm on
the embedding sum, pre-LN layers (HF `attention.ln` before attention, `ln` before the MLP),
and a final norm (`encoder.ln`) that the pooler and MLM head read. Heads and the qkv fusion
are as for BERT (hf/bert.py).

    ours = from_hf_state_dict(hf_model.state_dict(), config)
    hf_sd = to_hf_state_dict(our_sd, config, vocab_size=21248)

`MAPPING` is this family's entry in the registry (registry.py), keyed by ModelSpec.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from ..bert import BertModel
from .bert import (HF_QKV, POOLER, POSITION_EMBEDDINGS, PRE_LN_FINAL, PRE_LN_LAYER, TOKENTYPE_EMBEDDINGS,
                   WORD_EMBEDDINGS, EncoderLayout, architecture_heads, check_encoder_config, encoder_config_from_hf,
                   encoder_from_hf, encoder_hf_config_dict, encoder_mapping, encoder_to_hf,
                   require_absolute_positions)
from .common import hf_config_object

FAMILY = "MegatronBERT"
MODEL_TYPE = "megatron-bert"
LAYOUT = EncoderLayout(
    prefix="bert.",
    embeddings=[WORD_EMBEDDINGS, POSITION_EMBEDDINGS, TOKENTYPE_EMBEDDINGS],
    embedding_norm=[],
    layer_qkv=HF_QKV,
    layer=PRE_LN_LAYER,
    final=PRE_LN_FINAL,
    pooler=POOLER,
)
ARCHITECTURES = {  # name -> (prefix, pooler, MLM head, binary head); the first is the default export
    "MegatronBertForPreTraining": (True, True, True, True),
    "MegatronBertModel": (False, True, False, False),
    "MegatronBertForMaskedLM": (True, False, True, False),
}


def check_config(config: TransformerConfig) -> None:
    check_encoder_config(config, "HF MegatronBertModel", "pre", "learned_absolute")


def from_hf_state_dict(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """MegatronBertModel / ...ForPreTraining / ...ForMaskedLM state dict -> our BertModel's."""
    check_config(config)
    return encoder_from_hf(hf_sd, config, LAYOUT, FAMILY, padded_vocab_size)


def to_hf_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                     architecture: str = "MegatronBertForPreTraining", vocab_size: Optional[int] = None
                     ) -> Dict[str, torch.Tensor]:
    check_config(config)
    prefix, pooler, mlm, binary = architecture_heads(ARCHITECTURES, architecture)
    return encoder_to_hf(our_sd, config, LAYOUT, FAMILY, prefix, pooler, mlm, binary, vocab_size)


def hf_config_dict(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 512,
                   type_vocab_size: int = 2, architecture: str = "MegatronBertForPreTraining") -> dict:
    """MegatronBERT's config.json for our model (vocab_size: the real, unpadded size)."""
    check_config(config)
    return encoder_hf_config_dict(config, MODEL_TYPE, architecture, vocab_size, max_position_embeddings,
                                  type_vocab_size, position_embedding_type="absolute")


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, architecture: str = "MegatronBertForPreTraining"):
    """A transformers.MegatronBertConfig describing our model (vocab_size: the real, unpadded size)."""
    return hf_config_object(hf_config_dict(config, vocab_size, max_position_embeddings, type_vocab_size,
                                           architecture), MODEL_TYPE)


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our pre-LN TransformerConfig for a transformers.MegatronBertConfig or its config.json dict."""
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    require_absolute_positions(hf_config, FAMILY)
    return encoder_config_from_hf(hf_config, overrides, layernorm_position="pre",
                                  position_embedding_type="learned_absolute")


MAPPING = encoder_mapping("megatron_bert", MODEL_TYPE, ARCHITECTURES, BertModel, hf_config_dict, from_hf_config,
                          from_hf_state_dict,
                          lambda sd, spec: to_hf_state_dict(sd, spec.config, spec.architecture, spec.vocab_size))
