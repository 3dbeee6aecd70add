"""RoFormerForMaskedLM / RoFormerForCausalLM (HF transformers) <-> our RoFormerModel.

HF's RoFormer is the post-LN BERT layout without a position table: word + token-type
embeddings, LayerNorm, post-LN layers with rotary q/k, and BERT's MLM head
(`cls.predictions`, tied to the word table). Its rotary pairs are adjacent channels
(apply_rotary_position_embeddings stacks [-x1, x0, -x3, x2, ...]) at angles
p * 10000^(-2j/head_dim): our rotary_interleaved=True with base 10000, so q and k rows map
unchanged. `roformer.encoder.embed_positions.weight` is a fixed sinusoid table HF keeps in
its state dict; it is dropped on import and recomputed on export.

Not covered: RoFormer configs with embedding_size != hidden_size (an extra projection
we do not have) or rotary_value=True (HF also rotates v), and Zhouwenwang's pre-LN
checkpoints, whose names follow MegatronBERT (see models/roformer.py).

    ours = from_hf_state_dict(hf_model.state_dict(), config)
    hf_sd = to_hf_state_dict(our_sd, config, max_position_embeddings=1536)
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from .bert import (ConversionError, EncoderLayout, check_encoder_config, common_config_kwargs, common_hf_kwargs,
                   encoder_from_hf, encoder_to_hf)

FAMILY = "RoFormer"
POSITIONS = "encoder.embed_positions.weight"
LAYOUT = EncoderLayout(
    prefix="roformer.",
    embeddings=[("embedding.word_embeddings", "embeddings.word_embeddings"),
                ("embedding.tokentype_embeddings", "embeddings.token_type_embeddings")],
    embedding_norm=[("embedding.layernorm", "embeddings.LayerNorm")],
    layer_qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    layer=[("self_attention.dense", "attention.output.dense"),
           ("post_attention_layernorm", "attention.output.LayerNorm"),
           ("mlp.dense_h_to_4h", "intermediate.dense"),
           ("mlp.dense_4h_to_h", "output.dense"),
           ("post_mlp_layernorm", "output.LayerNorm")],
    final=[],
    pooler=[],
    extra_buffers=(POSITIONS,),
)
ARCHITECTURES = {  # name -> (prefix, pooler, MLM head, binary head)
    "RoFormerModel": (False, False, False, False),
    "RoFormerForMaskedLM": (True, False, True, False),
    "RoFormerForCausalLM": (True, False, True, False),
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
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}.")
    prefix, pooler, mlm, binary = ARCHITECTURES[architecture]
    out = encoder_to_hf(our_sd, config, LAYOUT, FAMILY, prefix, pooler, mlm, binary, vocab_size)
    out[(LAYOUT.prefix if prefix else "") + POSITIONS] = sinusoidal_positions(max_position_embeddings,
                                                                              config.kv_channels)
    return out


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 1536,
                 type_vocab_size: int = 2, architecture: str = "RoFormerForMaskedLM"):
    """A transformers.RoFormerConfig (is_decoder=True for RoFormerForCausalLM)."""
    from transformers import RoFormerConfig
    check_config(config)
    return RoFormerConfig(**common_hf_kwargs(config, vocab_size), embedding_size=config.hidden_size,
                          max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
                          rotary_value=False, is_decoder=architecture == "RoFormerForCausalLM",
                          architectures=[architecture])


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our post-LN rotary TransformerConfig for a transformers.RoFormerConfig."""
    embedding_size = getattr(hf_config, "embedding_size", None) or hf_config.hidden_size
    if embedding_size != hf_config.hidden_size:
        raise ConversionError(f"RoFormer embedding_size {embedding_size} != hidden_size {hf_config.hidden_size} "
                              f"needs an embedding projection this model does not have.")
    if getattr(hf_config, "rotary_value", False):
        raise ConversionError("RoFormer with rotary_value=True (rotating v too) is not supported.")
    values = dict(common_config_kwargs(hf_config), layernorm_position="post", position_embedding_type="rope",
                  rotary_interleaved=True)
    values.update(overrides)
    return TransformerConfig(**values)
