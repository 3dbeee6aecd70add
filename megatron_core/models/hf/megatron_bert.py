"""MegatronBertForPreTraining (HF transformers) <-> our BertModel, pre-LN MegatronBERT layout.

The layout of NVIDIA's Megatron BERT and IDEA's Erlangshen-MegatronBert-1.3B: no norm on
the embedding sum, pre-LN layers (HF `attention.ln` before attention, `ln` before the MLP),
and a final norm (`encoder.ln`) that the pooler and MLM head read. Heads and the qkv fusion
are as for BERT (hf/bert.py).

    ours = from_hf_state_dict(hf_model.state_dict(), config)
    hf_sd = to_hf_state_dict(our_sd, config, vocab_size=21248)
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from .bert import (HF_QKV, POOLER, POSITION_EMBEDDINGS, PRE_LN_FINAL, PRE_LN_LAYER, TOKENTYPE_EMBEDDINGS,
                   WORD_EMBEDDINGS, EncoderLayout, architecture_heads, check_encoder_config, common_hf_kwargs,
                   encoder_config_from_hf, encoder_from_hf, encoder_to_hf, require_absolute_positions)

FAMILY = "MegatronBERT"
LAYOUT = EncoderLayout(
    prefix="bert.",
    embeddings=[WORD_EMBEDDINGS, POSITION_EMBEDDINGS, TOKENTYPE_EMBEDDINGS],
    embedding_norm=[],
    layer_qkv=HF_QKV,
    layer=PRE_LN_LAYER,
    final=PRE_LN_FINAL,
    pooler=POOLER,
)
ARCHITECTURES = {  # name -> (prefix, pooler, MLM head, binary head)
    "MegatronBertModel": (False, True, False, False),
    "MegatronBertForPreTraining": (True, True, True, True),
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


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, architecture: str = "MegatronBertForPreTraining"):
    """A transformers.MegatronBertConfig describing our model (vocab_size: the real, unpadded size)."""
    from transformers import MegatronBertConfig
    check_config(config)
    return MegatronBertConfig(**common_hf_kwargs(config, vocab_size), max_position_embeddings=max_position_embeddings,
                              type_vocab_size=type_vocab_size, architectures=[architecture])


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our pre-LN TransformerConfig for a transformers.MegatronBertConfig."""
    require_absolute_positions(hf_config, FAMILY)
    return encoder_config_from_hf(hf_config, overrides, layernorm_position="pre",
                                  position_embedding_type="learned_absolute")
