"""RoFormerForMaskedLM / RoFormerForCausalLM (HF transformers) <-> our RoFormerModel.

HF's RoFormer is the post-LN BERT layout without a position table: word + token-type
embeddings, LayerNorm, post-LN layers with rotary q/k, and BERT's MLM head
(`cls.predictions`, tied to the word table). Its rotary pairs are adjacent channels
(apply_rotary_position_embeddings stacks [-x1, x0, -x3, x2, ...]) at angles
p * 10000^(-2j/head_dim): our rotary_interleaved=True with base 10000, so q and k rows map
unchanged. `roformer.encoder.embed_positions.weight` is a fixed sinusoid table HF keeps in
its state dict; it is dropped on import and recomputed on export.

Not covered: RoFormer configs with embedding_size != hidden_size (an extra projection
we do not have) or rotary_value=True (HF also rotates v).

Zhouwenwang (IDEA-CCNL, Fengshenbang-LM fengshen/models/roformer) is not in transformers:
its RoFormer is MegatronBERT's pre-LN layout (`attention.ln`, `ln`, `encoder.ln`, no
embedding norm) without a position table, with rotary q/k. `from_zhouwenwang_state_dict`
/ `to_zhouwenwang_state_dict` map those names (read from Fengshenbang's modeling file and
checked against an independent reference forward in the tests, not against a downloaded
checkpoint); its per-layer `rope_emb.div_term` and `embeddings.position_ids` buffers are
dropped on import and recomputed on export. Its RoFormerModel has a pooler: build
RoFormerModel(..., add_pooler=True) to load one.

    ours = from_hf_state_dict(hf_model.state_dict(), config)
    hf_sd = to_hf_state_dict(our_sd, config, max_position_embeddings=1536)

`MAPPING` is HF RoFormer's entry in the registry (registry.py), keyed by ModelSpec;
Zhouwenwang has no transformers class and so no entry.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from ..roformer import RoFormerModel
from .bert import (HF_QKV, POOLER, POST_LN_LAYER, PRE_LN_FINAL, PRE_LN_LAYER, TOKENTYPE_EMBEDDINGS, WORD_EMBEDDINGS,
                   ConversionError, EncoderLayout, architecture_heads, check_encoder_config, encoder_config_from_hf,
                   encoder_from_hf, encoder_hf_config_dict, encoder_mapping, encoder_to_hf)
from .common import hf_config_object, model_argument

FAMILY = "RoFormer"
MODEL_TYPE = "roformer"
POSITIONS = "encoder.embed_positions.weight"
LAYOUT = EncoderLayout(  # BERT's post-LN layout without the position table and pooler
    prefix="roformer.",
    embeddings=[WORD_EMBEDDINGS, TOKENTYPE_EMBEDDINGS],
    embedding_norm=[("embedding.layernorm", "embeddings.LayerNorm")],
    layer_qkv=HF_QKV,
    layer=POST_LN_LAYER,
    final=[],
    pooler=[],
    extra_buffers=(POSITIONS,),
)
ZHOUWENWANG_FAMILY = "Zhouwenwang RoFormer"
ZHOUWENWANG_ROPE = "attention.self.rope_emb.div_term"
ZHOUWENWANG_POSITION_IDS = "embeddings.position_ids"
ZHOUWENWANG_LAYOUT = EncoderLayout(  # MegatronBERT's pre-LN layout without the position table
    prefix="bert.",
    embeddings=[WORD_EMBEDDINGS, TOKENTYPE_EMBEDDINGS],
    embedding_norm=[],
    layer_qkv=HF_QKV,
    layer=PRE_LN_LAYER,
    final=PRE_LN_FINAL,
    pooler=POOLER,
    extra_buffers=(ZHOUWENWANG_POSITION_IDS,),
    layer_buffers=(ZHOUWENWANG_ROPE,),
)
ARCHITECTURES = {  # name -> (prefix, pooler, MLM head, binary head); the first is the default export
    "RoFormerForMaskedLM": (True, False, True, False),
    "RoFormerForCausalLM": (True, False, True, False),
    "RoFormerModel": (False, False, False, False),
}


def check_config(config: TransformerConfig) -> None:
    check_encoder_config(config, "HF RoFormer", "post", "rope")


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """HF's RoFormerSinusoidalPositionalEmbedding table: [sin of all pairs | cos of all pairs]."""
    if dim % 2:
        raise ConversionError(f"the RoFormer head size must be even for rotary pairs, got {dim}.")
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def from_hf_state_dict(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """RoFormerModel / RoFormerForMaskedLM / RoFormerForCausalLM state dict -> our RoFormerModel's."""
    check_config(config)
    return encoder_from_hf(hf_sd, config, LAYOUT, FAMILY, padded_vocab_size)


def to_hf_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                     architecture: str = "RoFormerForMaskedLM", vocab_size: Optional[int] = None,
                     max_position_embeddings: int = 1536) -> Dict[str, torch.Tensor]:
    check_config(config)
    prefix, pooler, mlm, binary = architecture_heads(ARCHITECTURES, architecture)
    out = encoder_to_hf(our_sd, config, LAYOUT, FAMILY, prefix, pooler, mlm, binary, vocab_size)
    out[(LAYOUT.prefix if prefix else "") + POSITIONS] = sinusoidal_positions(max_position_embeddings,
                                                                              config.kv_channels)
    return out


def hf_config_dict(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 1536,
                   type_vocab_size: int = 2, architecture: str = "RoFormerForMaskedLM") -> dict:
    """RoFormer's config.json for our model (is_decoder=True for RoFormerForCausalLM)."""
    check_config(config)
    return encoder_hf_config_dict(config, MODEL_TYPE, architecture, vocab_size, max_position_embeddings,
                                  type_vocab_size, embedding_size=config.hidden_size, rotary_value=False,
                                  is_decoder=architecture == "RoFormerForCausalLM")


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 1536,
                 type_vocab_size: int = 2, architecture: str = "RoFormerForMaskedLM"):
    """A transformers.RoFormerConfig (is_decoder=True for RoFormerForCausalLM)."""
    return hf_config_object(hf_config_dict(config, vocab_size, max_position_embeddings, type_vocab_size,
                                           architecture), MODEL_TYPE)


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our post-LN rotary TransformerConfig for a transformers.RoFormerConfig or its config.json dict."""
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    embedding_size = getattr(hf_config, "embedding_size", None) or hf_config.hidden_size
    if embedding_size != hf_config.hidden_size:
        raise ConversionError(f"RoFormer embedding_size {embedding_size} != hidden_size {hf_config.hidden_size} "
                              f"needs an embedding projection this model does not have.")
    if getattr(hf_config, "rotary_value", False):
        raise ConversionError("RoFormer with rotary_value=True (rotating v too) is not supported.")
    return encoder_config_from_hf(hf_config, overrides, layernorm_position="post", position_embedding_type="rope",
                                  rotary_interleaved=True)


MAPPING = encoder_mapping(
    "roformer", MODEL_TYPE, ARCHITECTURES, RoFormerModel, hf_config_dict, from_hf_config, from_hf_state_dict,
    lambda sd, spec: to_hf_state_dict(sd, spec.config, spec.architecture, spec.vocab_size,
                                      model_argument(RoFormerModel, spec, "max_sequence_length")))


# --- Zhouwenwang (Fengshenbang-LM) -----------------------------------------------------------
def from_zhouwenwang_state_dict(sd: Dict[str, torch.Tensor], config: TransformerConfig,
                                padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """A Zhouwenwang RoFormerModel (bare) or RoFormerForMaskedLM ("bert." + cls) state dict -> ours."""
    check_encoder_config(config, "Zhouwenwang RoFormer", "pre", "rope")
    return encoder_from_hf(sd, config, ZHOUWENWANG_LAYOUT, ZHOUWENWANG_FAMILY, padded_vocab_size)


def to_zhouwenwang_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                              with_mlm_head: bool = True, vocab_size: Optional[int] = None,
                              max_position_embeddings: int = 512) -> Dict[str, torch.Tensor]:
    """Ours -> Zhouwenwang names: "bert." + cls.predictions with the MLM head, bare RoFormerModel
    names without it. The pooler is written when our model has one."""
    check_encoder_config(config, "Zhouwenwang RoFormer", "pre", "rope")
    with_pooler = "pooler.dense.weight" in our_sd
    out = encoder_to_hf(our_sd, config, ZHOUWENWANG_LAYOUT, ZHOUWENWANG_FAMILY, with_mlm_head, with_pooler,
                        with_mlm_head, False, vocab_size)
    base = ZHOUWENWANG_LAYOUT.prefix if with_mlm_head else ""
    d = config.kv_channels
    div_term = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    for i in range(config.num_layers):
        out[f"{base}encoder.layer.{i}.{ZHOUWENWANG_ROPE}"] = div_term.clone()
    out[base + ZHOUWENWANG_POSITION_IDS] = torch.arange(max_position_embeddings).unsqueeze(0)
    return out
