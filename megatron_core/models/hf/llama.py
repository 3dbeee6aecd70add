"""LlamaForCausalLM (HF transformers) <-> our Llama-style GPTModel, full (TP=1) state dicts.

    ours = from_hf_state_dict(hf_model.state_dict(), config, padded_vocab_size=32000)
    hf_sd = to_hf_state_dict(our_model.state_dict(), config, vocab_size=32000)
    hf_config = to_hf_config(config, vocab_size=32000, max_position_embeddings=4096)

q/k/v (HF: separate, grouped-query) become our grouped fused query_key_value
(models/hf/qkv_layout.py); gate and up become our dense_h_to_4h [gate; up] (the stride-2
layout the tensor-parallel split keeps per rank); o and down are plain renames. HF Llama
rotates the two halves of each head (rotate_half), which is our rotary_interleaved=False,
so q and k rows load without any permutation. (Meta's original checkpoints rotate
adjacent pairs; HF's conversion script permutes them into halves, not us.)

`MAPPING` is this family's entry in the registry (registry.py), keyed by ModelSpec.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from ..gpt import GPTModel
from .common import (ConversionError, HFMapping, ModelSpec, owning_outputs, check_vocab_rows, count_layers, hf_architecture,
                     hf_config_object, model_argument, pad_vocab_rows, require, take, trim_vocab_rows)
from .qkv_layout import deinterleave_qkv, interleave_qkv

FAMILY = "HF LlamaForCausalLM"
MODEL_TYPE = "llama"
ARCHITECTURES = ("LlamaForCausalLM",)

_LAYER_PAIRS = [  # (ours inside a layer, HF inside a layer)
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("post_attention_layernorm.weight", "post_attention_layernorm.weight"),
    ("self_attention.dense.weight", "self_attn.o_proj.weight"),
    ("mlp.dense_4h_to_h.weight", "mlp.down_proj.weight"),
]


def check_config(config: TransformerConfig) -> None:
    require(config, FAMILY, layernorm_position="pre", normalization="RMSNorm", activation="swiglu",
            position_embedding_type="rope", rotary_interleaved=False, rotary_percent=1.0, add_bias_linear=False,
            add_qkv_bias=False, apply_residual_connection_post_layernorm=False, softmax_scale=None,
            final_layernorm=True)


@owning_outputs
def from_hf_state_dict(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """LlamaForCausalLM state dict -> our GPTModel's (padded_vocab_size appends zero rows)."""
    check_config(config)
    n_layers = count_layers(hf_sd, "model.layers.")
    if n_layers != config.num_layers:
        raise ConversionError(f"the {FAMILY} state dict has {n_layers} layers but config.num_layers is "
                              f"{config.num_layers}.")
    heads, groups = config.num_attention_heads, config.num_query_groups
    embed = take(hf_sd, "model.embed_tokens.weight", FAMILY)
    ours = {
        "embedding.word_embeddings.weight": pad_vocab_rows(embed, padded_vocab_size, "embed_tokens"),
        "decoder.final_layernorm.weight": take(hf_sd, "model.norm.weight", FAMILY),
    }
    if not config.share_embeddings_and_output_weights:
        head = hf_sd.get("lm_head.weight", embed)  # a tied HF model may omit lm_head
        ours["output_layer.weight"] = pad_vocab_rows(head, padded_vocab_size, "lm_head")
    for i in range(n_layers):
        hf, our = f"model.layers.{i}.", f"decoder.layers.{i}."
        q, k, v = (take(hf_sd, f"{hf}self_attn.{n}_proj.weight", FAMILY) for n in "qkv")
        ours[our + "self_attention.query_key_value.weight"] = interleave_qkv(q, k, v, heads, groups)
        ours[our + "mlp.dense_h_to_4h.weight"] = torch.cat([take(hf_sd, hf + "mlp.gate_proj.weight", FAMILY),
                                                            take(hf_sd, hf + "mlp.up_proj.weight", FAMILY)])
        for our_name, hf_name in _LAYER_PAIRS:
            ours[our + our_name] = take(hf_sd, hf + hf_name, FAMILY)
    return ours


@owning_outputs
def to_hf_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                     vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Our GPTModel's full state dict -> LlamaForCausalLM's (vocab_size drops our padding rows)."""
    check_config(config)
    heads, groups = config.num_attention_heads, config.num_query_groups
    embed = trim_vocab_rows(take(our_sd, "embedding.word_embeddings.weight", "GPTModel"), vocab_size,
                            "the word table")
    head = embed if config.share_embeddings_and_output_weights else \
        trim_vocab_rows(take(our_sd, "output_layer.weight", "GPTModel"), vocab_size, "the output layer")
    hf = {"model.embed_tokens.weight": embed, "lm_head.weight": head,
          "model.norm.weight": take(our_sd, "decoder.final_layernorm.weight", "GPTModel")}
    for i in range(config.num_layers):
        our, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = deinterleave_qkv(take(our_sd, our + "self_attention.query_key_value.weight", "GPTModel"),
                                   heads, groups)
        hf[h + "self_attn.q_proj.weight"], hf[h + "self_attn.k_proj.weight"], hf[h + "self_attn.v_proj.weight"] = q, k, v
        gate, up = take(our_sd, our + "mlp.dense_h_to_4h.weight", "GPTModel").chunk(2, dim=0)
        hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"] = gate, up
        for our_name, hf_name in _LAYER_PAIRS:
            hf[h + hf_name] = take(our_sd, our + our_name, "GPTModel")
    return hf


def hf_config_dict(config: TransformerConfig, vocab_size: int, max_position_embeddings: int) -> dict:
    """LlamaForCausalLM's config.json for our model (vocab_size: the real, unpadded size). The
    rotary base is written both as transformers 5 reads it (rope_parameters) and as 4.x does
    (rope_theta)."""
    check_config(config)
    return dict(model_type=MODEL_TYPE, architectures=list(ARCHITECTURES), vocab_size=vocab_size,
                hidden_size=config.hidden_size, intermediate_size=config.ffn_hidden_size,
                num_hidden_layers=config.num_layers, num_attention_heads=config.num_attention_heads,
                num_key_value_heads=config.num_query_groups, head_dim=config.kv_channels,
                max_position_embeddings=max_position_embeddings, rms_norm_eps=config.layernorm_epsilon,
                hidden_act="silu", rope_theta=config.rotary_base,
                rope_parameters={"rope_type": "default", "rope_theta": config.rotary_base},
                attention_bias=False, mlp_bias=False, attention_dropout=config.attention_dropout,
                initializer_range=config.init_method_std,
                tie_word_embeddings=config.share_embeddings_and_output_weights,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int):
    """A transformers.LlamaConfig for our model (vocab_size: the real, unpadded size)."""
    return hf_config_object(hf_config_dict(config, vocab_size, max_position_embeddings), MODEL_TYPE)


def _rope_theta(hf_config) -> float:
    # transformers 5 keeps theta and scaling in rope_parameters; older versions used
    # rope_theta and rope_scaling (None when unscaled).
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConversionError(f"Llama rope_type {rope_type!r} (rope scaling) is not supported; only 'default'.")
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our TransformerConfig for a transformers.LlamaConfig or its config.json dict (overrides: TP
    size, recompute, ...)."""
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    if hf_config.hidden_act != "silu":
        raise ConversionError(f"Llama hidden_act={hf_config.hidden_act!r} is not supported; only 'silu' (SwiGLU).")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ConversionError("Llama configs with attention_bias or mlp_bias are not supported.")
    from ..llama import llama_config
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    values = dict(num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
                  num_attention_heads=hf_config.num_attention_heads,
                  num_query_groups=hf_config.num_key_value_heads or hf_config.num_attention_heads,
                  ffn_hidden_size=hf_config.intermediate_size, rms_norm_eps=hf_config.rms_norm_eps,
                  rope_theta=_rope_theta(hf_config), kv_channels=head_dim,
                  attention_dropout=hf_config.attention_dropout, init_method_std=hf_config.initializer_range,
                  share_embeddings_and_output_weights=bool(getattr(hf_config, "tie_word_embeddings", False)))
    values.update(overrides)
    return llama_config(**values)


# --- the registry entry: ModelSpec in, ModelSpec out -------------------------------------------------
def _config_to_hf(spec: ModelSpec) -> dict:
    return hf_config_dict(spec.config, spec.vocab_size, model_argument(GPTModel, spec, "max_sequence_length"))


def _config_from_hf(hf_config, padded_vocab_size: Optional[int] = None, **overrides) -> ModelSpec:
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    return MAPPING.spec(from_hf_config(hf_config, **overrides), hf_config.vocab_size, padded_vocab_size,
                        hf_architecture(hf_config, ARCHITECTURES),
                        max_sequence_length=hf_config.max_position_embeddings)


def _state_dict_to_hf(our_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
    check_vocab_rows(take(our_sd, "embedding.word_embeddings.weight", "GPTModel"), spec, "the word table")
    return to_hf_state_dict(our_sd, spec.config, vocab_size=spec.vocab_size)


def _state_dict_from_hf(hf_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
    return from_hf_state_dict(hf_sd, spec.config, padded_vocab_size=spec.padded_vocab_size)


MAPPING = HFMapping(name="llama", model_type=MODEL_TYPE, architectures=ARCHITECTURES, model_class=GPTModel,
                    config_to_hf=_config_to_hf, config_from_hf=_config_from_hf,
                    state_dict_to_hf=_state_dict_to_hf, state_dict_from_hf=_state_dict_from_hf)
