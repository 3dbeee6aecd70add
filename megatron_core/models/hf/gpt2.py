"""GPT2LMHeadModel (HF transformers) <-> our GPTModel, full (TP=1) state dicts.

    ours = from_hf_state_dict(hf_model.state_dict(), config, padded_vocab_size=50304)
    hf_sd = to_hf_state_dict(our_model.state_dict(), config, vocab_size=50257)
    hf_config = to_hf_config(config, vocab_size=50257, max_position_embeddings=1024)  # hf_config_dict: plain dict
    config = from_hf_config(hf_config, tensor_model_parallel_size=1)   # a transformers config or config.json dict

`MAPPING` is this family's entry in the registry (registry.py), keyed by ModelSpec.

HF GPT-2 uses Conv1D modules, whose weights are stored [in, out], the transpose of a
Linear's; c_attn fuses q | k | v (each [h, h], heads in order) along its output, which
becomes our per-head interleaved query_key_value. gelu_new is our gelu_tanh; positions
are learned; the LM head is the word table (tied).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from ..gpt import GPTModel
from .common import (ConversionError, HFMapping, ModelSpec, owning_outputs, check_vocab_rows, count_layers, hf_architecture,
                     hf_config_object, model_argument, pad_vocab_rows, require, take, trim_vocab_rows)
from .qkv_layout import qkv_from_blocks, qkv_to_blocks

FAMILY = "HF GPT2LMHeadModel"
MODEL_TYPE = "gpt2"
ARCHITECTURES = ("GPT2LMHeadModel",)
_ACT_TO_OURS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# (our name inside a layer, HF name inside a block, is a Conv1D weight)
_LAYER_PAIRS = [
    ("input_layernorm", "ln_1", False),
    ("post_attention_layernorm", "ln_2", False),
    ("self_attention.dense", "attn.c_proj", True),
    ("mlp.dense_h_to_4h", "mlp.c_fc", True),
    ("mlp.dense_4h_to_h", "mlp.c_proj", True),
]


def check_config(config: TransformerConfig) -> None:
    require(config, FAMILY, layernorm_position="pre", normalization="LayerNorm",
            position_embedding_type="learned_absolute", add_bias_linear=True, add_qkv_bias=True,
            num_query_groups=config.num_attention_heads, share_embeddings_and_output_weights=True,
            apply_residual_connection_post_layernorm=False, softmax_scale=None, final_layernorm=True)
    if config.activation not in _ACT_TO_HF:
        raise ConversionError(f"{FAMILY} has no activation {config.activation!r}; use one of {sorted(_ACT_TO_HF)}.")
    if config.kv_channels * config.num_attention_heads != config.hidden_size:
        raise ConversionError(f"{FAMILY} needs kv_channels x num_attention_heads == hidden_size "
                              f"({config.kv_channels} x {config.num_attention_heads} != {config.hidden_size}).")


@owning_outputs
def from_hf_state_dict(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """GPT2LMHeadModel (or GPT2Model) state dict -> our GPTModel's (padded_vocab_size appends zero rows)."""
    check_config(config)
    p = "transformer." if any(k.startswith("transformer.") for k in hf_sd) else ""
    n_layers = count_layers(hf_sd, f"{p}h.")
    if n_layers != config.num_layers:
        raise ConversionError(f"the {FAMILY} state dict has {n_layers} layers but config.num_layers is "
                              f"{config.num_layers}.")
    heads = config.num_attention_heads
    ours = {
        "embedding.word_embeddings.weight": pad_vocab_rows(take(hf_sd, f"{p}wte.weight", FAMILY),
                                                           padded_vocab_size, "wte"),
        "embedding.position_embeddings.weight": take(hf_sd, f"{p}wpe.weight", FAMILY),
        "decoder.final_layernorm.weight": take(hf_sd, f"{p}ln_f.weight", FAMILY),
        "decoder.final_layernorm.bias": take(hf_sd, f"{p}ln_f.bias", FAMILY),
    }
    for i in range(n_layers):
        hf, our = f"{p}h.{i}.", f"decoder.layers.{i}."
        weight = take(hf_sd, hf + "attn.c_attn.weight", FAMILY).t()   # Conv1D [h, 3h] -> [3h, h]
        bias = take(hf_sd, hf + "attn.c_attn.bias", FAMILY)
        ours[our + "self_attention.query_key_value.weight"] = qkv_from_blocks(weight, heads, heads)
        ours[our + "self_attention.query_key_value.bias"] = qkv_from_blocks(bias, heads, heads)
        for our_name, hf_name, conv in _LAYER_PAIRS:
            w = take(hf_sd, f"{hf}{hf_name}.weight", FAMILY)
            ours[f"{our}{our_name}.weight"] = w.t().contiguous() if conv else w
            ours[f"{our}{our_name}.bias"] = take(hf_sd, f"{hf}{hf_name}.bias", FAMILY)
    return ours


@owning_outputs
def to_hf_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                     vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Our GPTModel's full state dict -> GPT2LMHeadModel's (vocab_size drops our padding rows)."""
    check_config(config)
    heads = config.num_attention_heads
    wte = trim_vocab_rows(take(our_sd, "embedding.word_embeddings.weight", "GPTModel"), vocab_size, "the word table")
    hf = {
        "transformer.wte.weight": wte,
        "transformer.wpe.weight": take(our_sd, "embedding.position_embeddings.weight", "GPTModel"),
        "transformer.ln_f.weight": take(our_sd, "decoder.final_layernorm.weight", "GPTModel"),
        "transformer.ln_f.bias": take(our_sd, "decoder.final_layernorm.bias", "GPTModel"),
        "lm_head.weight": wte,
    }
    for i in range(config.num_layers):
        our, h = f"decoder.layers.{i}.", f"transformer.h.{i}."
        fused = take(our_sd, our + "self_attention.query_key_value.weight", "GPTModel")
        hf[h + "attn.c_attn.weight"] = qkv_to_blocks(fused, heads, heads).t().contiguous()
        fused = take(our_sd, our + "self_attention.query_key_value.bias", "GPTModel")
        hf[h + "attn.c_attn.bias"] = qkv_to_blocks(fused, heads, heads)
        for our_name, hf_name, conv in _LAYER_PAIRS:
            w = take(our_sd, f"{our}{our_name}.weight", "GPTModel")
            hf[f"{h}{hf_name}.weight"] = w.t().contiguous() if conv else w
            hf[f"{h}{hf_name}.bias"] = take(our_sd, f"{our}{our_name}.bias", "GPTModel")
    return hf


def hf_config_dict(config: TransformerConfig, vocab_size: int, max_position_embeddings: int) -> dict:
    """GPT2LMHeadModel's config.json for our model (vocab_size: the real, unpadded size)."""
    check_config(config)
    return dict(model_type=MODEL_TYPE, architectures=list(ARCHITECTURES), vocab_size=vocab_size,
                n_positions=max_position_embeddings, n_embd=config.hidden_size, n_layer=config.num_layers,
                n_head=config.num_attention_heads, n_inner=config.ffn_hidden_size,
                activation_function=_ACT_TO_HF[config.activation], layer_norm_epsilon=config.layernorm_epsilon,
                resid_pdrop=config.hidden_dropout, embd_pdrop=config.hidden_dropout,
                attn_pdrop=config.attention_dropout, initializer_range=config.init_method_std,
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int):
    """A transformers.GPT2Config for our model (vocab_size: the real, unpadded size)."""
    return hf_config_object(hf_config_dict(config, vocab_size, max_position_embeddings), MODEL_TYPE)


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our TransformerConfig for a transformers.GPT2Config or its config.json dict (overrides: TP
    size, recompute, ...)."""
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    act = hf_config.activation_function
    if act not in _ACT_TO_OURS:
        raise ConversionError(f"GPT-2 activation_function={act!r} is not supported; use one of {sorted(_ACT_TO_OURS)}.")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or getattr(hf_config, "reorder_and_upcast_attn",
                                                                                  False) \
            or not getattr(hf_config, "scale_attn_weights", True):
        raise ConversionError("GPT-2 configs with scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn or "
                              "scale_attn_weights=False are not supported; convert a standard GPT-2.")
    values = dict(num_layers=hf_config.n_layer, hidden_size=hf_config.n_embd, num_attention_heads=hf_config.n_head,
                  ffn_hidden_size=hf_config.n_inner or 4 * hf_config.n_embd, activation=_ACT_TO_OURS[act],
                  layernorm_epsilon=hf_config.layer_norm_epsilon, normalization="LayerNorm",
                  layernorm_position="pre", position_embedding_type="learned_absolute",
                  hidden_dropout=hf_config.resid_pdrop, attention_dropout=hf_config.attn_pdrop,
                  init_method_std=hf_config.initializer_range, share_embeddings_and_output_weights=True)
    values.update(overrides)
    return TransformerConfig(**values)


# --- the registry entry: ModelSpec in, ModelSpec out -------------------------------------------------
def _config_to_hf(spec: ModelSpec) -> dict:
    return hf_config_dict(spec.config, spec.vocab_size, model_argument(GPTModel, spec, "max_sequence_length"))


def _config_from_hf(hf_config, padded_vocab_size: Optional[int] = None, **overrides) -> ModelSpec:
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    return MAPPING.spec(from_hf_config(hf_config, **overrides), hf_config.vocab_size, padded_vocab_size,
                        hf_architecture(hf_config, ARCHITECTURES), max_sequence_length=hf_config.n_positions)


def _state_dict_to_hf(our_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
    check_vocab_rows(take(our_sd, "embedding.word_embeddings.weight", "GPTModel"), spec, "the word table")
    return to_hf_state_dict(our_sd, spec.config, vocab_size=spec.vocab_size)


def _state_dict_from_hf(hf_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
    return from_hf_state_dict(hf_sd, spec.config, padded_vocab_size=spec.padded_vocab_size)


MAPPING = HFMapping(name="gpt", model_type=MODEL_TYPE, architectures=ARCHITECTURES, model_class=GPTModel,
                    config_to_hf=_config_to_hf, config_from_hf=_config_from_hf,
                    state_dict_to_hf=_state_dict_to_hf, state_dict_from_hf=_state_dict_from_hf)
