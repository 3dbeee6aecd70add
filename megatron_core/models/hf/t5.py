"""HuggingFace T5ForConditionalGeneration <-> our T5Model (full TP=1 state dicts).

    HF                                                   ours
    shared.weight (= encoder/decoder.embed_tokens)       embedding.word_embeddings.weight (rows padded)
    {enc,dec}oder.block.0.layer.0.SelfAttention.
        relative_attention_bias.weight [buckets, heads]  {enc,dec}oder_relative_bias.weight
    X.block.i.layer.0.layer_norm                         X.layers.i.input_layernorm
    X.block.i.layer.0.SelfAttention.{q,k,v}              X.layers.i.self_attention.query_key_value
                                                         (per head [q0 k0 v0 | q1 k1 v1 | ...])
    X.block.i.layer.0.SelfAttention.o                    X.layers.i.self_attention.dense
    decoder.block.i.layer.1.layer_norm                   decoder.layers.i.post_inter_attention_layernorm
    decoder.block.i.layer.1.EncDecAttention.q            decoder.layers.i.inter_attention.query
    decoder.block.i.layer.1.EncDecAttention.{k,v}        decoder.layers.i.inter_attention.key_value
                                                         (per head [k0 v0 | k1 v1 | ...])
    decoder.block.i.layer.1.EncDecAttention.o            decoder.layers.i.inter_attention.dense
    X.block.i.layer.-1.layer_norm                        X.layers.i.post_attention_layernorm (before MLP)
    X.block.i.layer.-1.DenseReluDense.wi                 X.layers.i.mlp.dense_h_to_4h
    X.block.i.layer.-1.DenseReluDense.{wi_0,wi_1}        X.layers.i.mlp.dense_h_to_4h = [wi_0 (gate); wi_1]
    X.block.i.layer.-1.DenseReluDense.wo                 X.layers.i.mlp.dense_4h_to_h
    X.final_layer_norm                                   X.final_layernorm
    lm_head.weight                                       output_layer.weight (untied only)

T5 v1.0 ("relu", tied) scales the decoder output by d_model**-0.5 before the tied head;
v1.1 / mT5 ("gated-gelu", untied) do not. transformers >= 5 always ties lm_head to
`shared` and keeps the scaling choice in `config.scale_decoder_outputs` (it is
`tie_word_embeddings` in older versions); we read whichever the config has. A state dict
whose lm_head.weight differs from shared.weight is untied whatever the config says.

HF T5 applies dropout between the MLP activation and `wo`; ours has no dropout there
(the weights and the eval-mode function are identical).

    config = from_hf_config(hf_config)                 # a transformers T5Config or its config.json dict
    ours = from_hf_state_dict(hf_sd, config, decoder_num_layers, padded_vocab_size=32128)
    hf_sd = to_hf_state_dict(our_sd, config, decoder_num_layers, vocab_size=32100)
    hf_config = to_hf_config(config, 32100, decoder_num_layers)     # hf_config_dict: plain dict

`MAPPING` is this family's entry in the registry (registry.py), keyed by ModelSpec.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig
from ..t5 import T5Model
from .common import (ConversionError, HFMapping, ModelSpec, owning_outputs, check_vocab_rows, hf_architecture, hf_config_object,
                     model_argument, pad_vocab_rows, take, trim_vocab_rows)
from .qkv_layout import deinterleave_kv, deinterleave_qkv, interleave_kv, interleave_qkv

FAMILY = "HF T5ForConditionalGeneration"
MODEL_TYPE = "t5"
ARCHITECTURES = ("T5ForConditionalGeneration",)

_ACTIVATIONS = {"relu": "relu", "gated-gelu": "geglu_tanh", "gated-gelu_new": "geglu_tanh",
                "gated-silu": "swiglu", "gelu": "gelu", "gelu_new": "gelu_tanh"}
_HF_PROJ = {"relu": "relu", "geglu_tanh": "gated-gelu", "swiglu": "gated-silu", "gelu": "gelu",
            "gelu_tanh": "gelu_new"}


def hf_scales_decoder_output(hf_config) -> bool:
    return bool(getattr(hf_config, "scale_decoder_outputs", getattr(hf_config, "tie_word_embeddings", True)))


def from_hf_config(hf_config, tensor_model_parallel_size: int = 1, **overrides) -> TransformerConfig:
    """Our TransformerConfig for an HF T5Config or its config.json dict (encoder layer count;
    decoder: hf num_decoder_layers)."""
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    proj = hf_config.feed_forward_proj
    if proj not in _ACTIVATIONS:
        raise ConversionError(f"T5 feed_forward_proj {proj!r} has no equivalent here; supported: "
                         f"{', '.join(sorted(_ACTIVATIONS))}.")
    values = dict(
        num_layers=hf_config.num_layers, hidden_size=hf_config.d_model, num_attention_heads=hf_config.num_heads,
        kv_channels=hf_config.d_kv, ffn_hidden_size=hf_config.d_ff, normalization="RMSNorm",
        layernorm_epsilon=hf_config.layer_norm_epsilon, layernorm_position="pre", activation=_ACTIVATIONS[proj],
        position_embedding_type="t5_relative",
        relative_attention_num_buckets=hf_config.relative_attention_num_buckets,
        relative_attention_max_distance=hf_config.relative_attention_max_distance,
        add_bias_linear=False, hidden_dropout=hf_config.dropout_rate, attention_dropout=hf_config.dropout_rate,
        softmax_scale=1.0,
        share_embeddings_and_output_weights=hf_scales_decoder_output(hf_config),
        tensor_model_parallel_size=tensor_model_parallel_size)
    values.update(overrides)
    return TransformerConfig(**values)


def check_config(config: TransformerConfig) -> None:
    if config.position_embedding_type != "t5_relative" or config.normalization != "RMSNorm" \
            or config.add_bias_linear or config.add_qkv_bias or config.softmax_scale != 1.0:
        raise ConversionError("only HF-style T5 configs (t5_relative positions, RMSNorm, no biases, "
                              "softmax_scale=1.0) map to T5ForConditionalGeneration.")
    if config.activation not in _HF_PROJ:
        raise ConversionError(f"activation {config.activation!r} has no T5 feed_forward_proj equivalent; use one "
                              f"of {sorted(_HF_PROJ)}.")
    if config.num_query_groups != config.num_attention_heads:
        raise ConversionError("HF T5 has no grouped-query attention; use num_query_groups = num_attention_heads.")


def hf_config_dict(config: TransformerConfig, vocab_size: int, decoder_num_layers: Optional[int] = None,
                   max_sequence_length: int = 512) -> dict:
    """T5ForConditionalGeneration's config.json; vocab_size is the HF (unpadded) vocabulary.
    tie_word_embeddings is what both transformers 4 (tie + scale) and 5 (scale) read."""
    check_config(config)
    return dict(model_type=MODEL_TYPE, architectures=list(ARCHITECTURES), vocab_size=vocab_size,
                d_model=config.hidden_size, d_kv=config.kv_channels, d_ff=config.ffn_hidden_size,
                num_layers=config.num_layers, num_decoder_layers=decoder_num_layers or config.num_layers,
                num_heads=config.num_attention_heads,
                relative_attention_num_buckets=config.relative_attention_num_buckets,
                relative_attention_max_distance=config.relative_attention_max_distance,
                dropout_rate=config.hidden_dropout, layer_norm_epsilon=config.layernorm_epsilon,
                feed_forward_proj=_HF_PROJ[config.activation], n_positions=max_sequence_length,
                is_encoder_decoder=True, tie_word_embeddings=config.share_embeddings_and_output_weights)


def to_hf_config(config: TransformerConfig, vocab_size: int, decoder_num_layers: Optional[int] = None, **extra):
    """An HF T5Config with our shapes; vocab_size is the HF (unpadded) vocabulary; extra: more config.json keys."""
    return hf_config_object({**hf_config_dict(config, vocab_size, decoder_num_layers), **extra}, MODEL_TYPE)


def _ffn_prefix(is_decoder: bool) -> int:
    return 2 if is_decoder else 1


@owning_outputs
def from_hf_state_dict(hf_state: Dict[str, torch.Tensor], config: TransformerConfig,
                       decoder_num_layers: Optional[int] = None,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Our full (TP=1) T5Model state dict from an HF T5ForConditionalGeneration state dict
    (padded_vocab_size: zero rows appended up to it)."""
    if config.num_query_groups != config.num_attention_heads:
        raise ConversionError("HF T5 has no grouped-query attention; use num_query_groups = num_attention_heads.")
    heads = config.num_attention_heads
    dec_layers = decoder_num_layers or config.num_layers
    gated = config.gated_linear_unit

    def get(key):
        return take(hf_state, key, "HF T5")

    shared = get("shared.weight")
    out = {"embedding.word_embeddings.weight": pad_vocab_rows(shared, padded_vocab_size, "shared")}
    for stack, layers in (("encoder", config.num_layers), ("decoder", dec_layers)):
        is_dec = stack == "decoder"
        if config.position_embedding_type == "t5_relative":
            out[f"{stack}_relative_bias.weight"] = \
                get(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        for i in range(layers):
            src, dst = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
            out[f"{dst}.input_layernorm.weight"] = get(f"{src}.0.layer_norm.weight")
            attn = f"{src}.0.SelfAttention"
            out[f"{dst}.self_attention.query_key_value.weight"] = interleave_qkv(
                *(get(f"{attn}.{n}.weight") for n in "qkv"), heads, heads)
            out[f"{dst}.self_attention.dense.weight"] = get(f"{attn}.o.weight")
            if is_dec:
                cross = f"{src}.1.EncDecAttention"
                out[f"{dst}.post_inter_attention_layernorm.weight"] = get(f"{src}.1.layer_norm.weight")
                out[f"{dst}.inter_attention.query.weight"] = get(f"{cross}.q.weight")
                out[f"{dst}.inter_attention.key_value.weight"] = interleave_kv(
                    get(f"{cross}.k.weight"), get(f"{cross}.v.weight"), heads)
                out[f"{dst}.inter_attention.dense.weight"] = get(f"{cross}.o.weight")
            ff = f"{src}.{_ffn_prefix(is_dec)}"
            out[f"{dst}.post_attention_layernorm.weight"] = get(f"{ff}.layer_norm.weight")
            if gated:
                out[f"{dst}.mlp.dense_h_to_4h.weight"] = torch.cat(
                    [get(f"{ff}.DenseReluDense.wi_0.weight"), get(f"{ff}.DenseReluDense.wi_1.weight")])
            else:
                out[f"{dst}.mlp.dense_h_to_4h.weight"] = get(f"{ff}.DenseReluDense.wi.weight")
            out[f"{dst}.mlp.dense_4h_to_h.weight"] = get(f"{ff}.DenseReluDense.wo.weight")
        out[f"{stack}.final_layernorm.weight"] = get(f"{stack}.final_layer_norm.weight")
    if not config.share_embeddings_and_output_weights:
        # transformers 5 saves a tied lm_head only as `shared`
        out["output_layer.weight"] = pad_vocab_rows(hf_state.get("lm_head.weight", shared), padded_vocab_size,
                                                    "lm_head")
    return out


@owning_outputs
def to_hf_state_dict(state: Dict[str, torch.Tensor], config: TransformerConfig,
                     decoder_num_layers: Optional[int] = None,
                     vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """An HF T5ForConditionalGeneration state dict from our full (TP=1) T5Model state dict.

    vocab_size: the HF vocabulary (our padding rows are dropped); default all rows."""
    if config.position_embedding_type != "t5_relative":
        raise ConversionError("only T5 models with position_embedding_type='t5_relative' map to HF T5.")
    heads = config.num_attention_heads
    dec_layers = decoder_num_layers or config.num_layers
    gated = config.gated_linear_unit

    def get(key):
        return take(state, key, "our T5Model (full TP=1)")

    shared = trim_vocab_rows(get("embedding.word_embeddings.weight"), vocab_size, "the word table")
    out = {"shared.weight": shared, "encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared}
    for stack, layers in (("encoder", config.num_layers), ("decoder", dec_layers)):
        is_dec = stack == "decoder"
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
            get(f"{stack}_relative_bias.weight")
        for i in range(layers):
            src, dst = f"{stack}.layers.{i}", f"{stack}.block.{i}.layer"
            out[f"{dst}.0.layer_norm.weight"] = get(f"{src}.input_layernorm.weight")
            q, k, v = deinterleave_qkv(get(f"{src}.self_attention.query_key_value.weight"), heads, heads)
            attn = f"{dst}.0.SelfAttention"
            out.update({f"{attn}.q.weight": q, f"{attn}.k.weight": k, f"{attn}.v.weight": v,
                        f"{attn}.o.weight": get(f"{src}.self_attention.dense.weight")})
            if is_dec:
                cross = f"{dst}.1.EncDecAttention"
                k, v = deinterleave_kv(get(f"{src}.inter_attention.key_value.weight"), heads)
                out.update({f"{dst}.1.layer_norm.weight": get(f"{src}.post_inter_attention_layernorm.weight"),
                            f"{cross}.q.weight": get(f"{src}.inter_attention.query.weight"),
                            f"{cross}.k.weight": k, f"{cross}.v.weight": v,
                            f"{cross}.o.weight": get(f"{src}.inter_attention.dense.weight")})
            ff = f"{dst}.{_ffn_prefix(is_dec)}"
            out[f"{ff}.layer_norm.weight"] = get(f"{src}.post_attention_layernorm.weight")
            up = get(f"{src}.mlp.dense_h_to_4h.weight")
            if gated:
                gate, lin = up.chunk(2, dim=0)
                out[f"{ff}.DenseReluDense.wi_0.weight"] = gate
                out[f"{ff}.DenseReluDense.wi_1.weight"] = lin
            else:
                out[f"{ff}.DenseReluDense.wi.weight"] = up
            out[f"{ff}.DenseReluDense.wo.weight"] = get(f"{src}.mlp.dense_4h_to_h.weight")
        out[f"{stack}.final_layer_norm.weight"] = get(f"{stack}.final_layernorm.weight")
    out["lm_head.weight"] = shared if config.share_embeddings_and_output_weights \
        else trim_vocab_rows(get("output_layer.weight"), vocab_size, "the output layer")
    return out


# --- the registry entry: ModelSpec in, ModelSpec out -------------------------------------------------
def _config_to_hf(spec: ModelSpec) -> dict:
    return hf_config_dict(spec.config, spec.vocab_size, model_argument(T5Model, spec, "decoder_num_layers"),
                          model_argument(T5Model, spec, "max_sequence_length"))


def _config_from_hf(hf_config, padded_vocab_size: Optional[int] = None, **overrides) -> ModelSpec:
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    return MAPPING.spec(from_hf_config(hf_config, **overrides), hf_config.vocab_size, padded_vocab_size,
                        hf_architecture(hf_config, ARCHITECTURES), decoder_num_layers=hf_config.num_decoder_layers,
                        max_sequence_length=getattr(hf_config, "n_positions", 512))


def _state_dict_to_hf(our_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
    check_vocab_rows(take(our_sd, "embedding.word_embeddings.weight", "T5Model"), spec, "the word table")
    return to_hf_state_dict(our_sd, spec.config, model_argument(T5Model, spec, "decoder_num_layers"),
                            vocab_size=spec.vocab_size)


def _state_dict_from_hf(hf_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
    return from_hf_state_dict(hf_sd, spec.config, model_argument(T5Model, spec, "decoder_num_layers"),
                              padded_vocab_size=spec.padded_vocab_size)


MAPPING = HFMapping(name="t5", model_type=MODEL_TYPE, architectures=ARCHITECTURES, model_class=T5Model,
                    config_to_hf=_config_to_hf, config_from_hf=_config_from_hf,
                    state_dict_to_hf=_state_dict_to_hf, state_dict_from_hf=_state_dict_from_hf)
