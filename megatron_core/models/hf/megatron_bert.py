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
from .bert import (ConversionError, EncoderLayout, check_encoder_config, common_config_kwargs, common_hf_kwargs,
                   encoder_from_hf, encoder_to_hf)

FAMILY = "MegatronBERT"
LAYOUT = EncoderLayout(
    prefix="bert.",
    embeddings=[("embedding.word_embeddings", "embeddings.word_embeddings"),
                ("embedding.position_embeddings", "embeddings.position_embeddings"),
                ("embedding.tokentype_embeddings", "embeddings.token_type_embeddings")],
    embedding_norm=[],
    layer_qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    layer=[("input_layernorm", "attention.ln"),
           ("self_attention.dense", "attention.output.dense"),
           ("post_attention_layernorm", "ln"),
           ("mlp.dense_h_to_4h", "intermediate.dense"),
           ("mlp.dense_4h_to_h", "output.dense")],
    final=[("encoder.final_layernorm", "encoder.ln")],
    pooler=[("pooler.dense", "pooler.dense")],
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
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}.")
    prefix, pooler, mlm, binary = ARCHITECTURES[architecture]
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
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"position_embedding_type={hf_config.position_embedding_type!r} MegatronBERT is "
                              f"not supported; only 'absolute'.")
    values = dict(common_config_kwargs(hf_config), layernorm_position="pre",
                  position_embedding_type="learned_absolute")
    values.update(overrides)
    return TransformerConfig(**values)
