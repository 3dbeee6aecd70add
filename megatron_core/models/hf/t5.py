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
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...transformer.config import TransformerConfig

_ACTIVATIONS = {"relu": "relu", "gated-gelu": "geglu_tanh", "gated-gelu_new": "geglu_tanh",
                "gated-silu": "swiglu", "gelu": "gelu", "gelu_new": "gelu_tanh"}
_HF_PROJ = {"relu": "relu", "geglu_tanh": "gated-gelu", "swiglu": "gated-silu", "gelu": "gelu",
            "gelu_tanh": "gelu_new"}


def hf_scales_decoder_output(hf_config) -> bool:
    return bool(getattr(hf_config, "scale_decoder_outputs", getattr(hf_config, "tie_word_embeddings", True)))


def config_from_hf(hf_config, tensor_model_parallel_size: int = 1, **overrides) -> TransformerConfig:
    """Our TransformerConfig for an HF T5Config (encoder layer count; decoder: hf num_decoder_layers)."""
    proj = hf_config.feed_forward_proj
    if proj not in _ACTIVATIONS:
        raise ValueError(f"T5 feed_forward_proj {proj!r} has no equivalent here; supported: "
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


def hf_config_from_ours(config: TransformerConfig, vocab_size: int, decoder_num_layers: Optional[int] = None,
                        **extra):
    """An HF T5Config with our shapes; vocab_size is the HF (unpadded) vocabulary."""
    from transformers import T5Config
    if config.position_embedding_type != "t5_relative" or config.normalization != "RMSNorm" \
            or config.add_bias_linear or config.add_qkv_bias or config.softmax_scale != 1.0:
        raise ValueError("only HF-style T5 configs (t5_relative positions, RMSNorm, no biases, softmax_scale=1.0) "
                         "map to T5ForConditionalGeneration.")
    if config.activation not in _HF_PROJ:
        raise ValueError(f"activation {config.activation!r} has no T5 feed_forward_proj equivalent.")
    if config.num_query_groups != config.num_attention_heads:
        raise ValueError("HF T5 has no grouped-query attention; use num_query_groups = num_attention_heads.")
    return T5Config(vocab_size=vocab_size, d_model=config.hidden_size, d_kv=config.kv_channels,
                    d_ff=config.ffn_hidden_size, num_layers=config.num_layers,
                    num_decoder_layers=decoder_num_layers or config.num_layers,
                    num_heads=config.num_attention_heads,
                    relative_attention_num_buckets=config.relative_attention_num_buckets,
                    relative_attention_max_distance=config.relative_attention_max_distance,
                    dropout_rate=config.hidden_dropout, layer_norm_epsilon=config.layernorm_epsilon,
                    feed_forward_proj=_HF_PROJ[config.activation],
                    tie_word_embeddings=config.share_embeddings_and_output_weights, **extra)


def _interleave_heads(parts, head_dim: int) -> torch.Tensor:
    """[q; k; v] (each heads*d rows) -> per head [q0 k0 v0 | q1 k1 v1 | ...]."""
    split = [p.reshape(-1, head_dim, p.shape[-1]) for p in parts]
    return torch.stack(split, dim=1).reshape(-1, parts[0].shape[-1])


def _deinterleave_heads(fused: torch.Tensor, count: int, head_dim: int):
    heads = fused.reshape(-1, count, head_dim, fused.shape[-1])
    return [heads[:, i].reshape(-1, fused.shape[-1]) for i in range(count)]


def _ffn_prefix(is_decoder: bool) -> int:
    return 2 if is_decoder else 1


def from_hf_state_dict(hf_state: Dict[str, torch.Tensor], config: TransformerConfig,
                       decoder_num_layers: Optional[int] = None,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Our full (TP=1) T5Model state dict from an HF T5ForConditionalGeneration state dict."""
    if config.num_query_groups != config.num_attention_heads:
        raise ValueError("HF T5 has no grouped-query attention; use num_query_groups = num_attention_heads.")
    d = config.kv_channels
    dec_layers = decoder_num_layers or config.num_layers
    gated = config.gated_linear_unit
    try:
        shared = hf_state["shared.weight"]
        out = {}
        vocab = shared.shape[0]
        padded = padded_vocab_size or vocab
        if padded < vocab:
            raise ValueError(f"padded_vocab_size {padded} is smaller than the HF vocabulary {vocab}.")

        def pad(table):
            return torch.cat([table, table.new_zeros(padded - vocab, table.shape[1])]) if padded > vocab else table

        out["embedding.word_embeddings.weight"] = pad(shared)
        for stack, layers in (("encoder", config.num_layers), ("decoder", dec_layers)):
            is_dec = stack == "decoder"
            if config.position_embedding_type == "t5_relative":
                out[f"{stack}_relative_bias.weight"] = \
                    hf_state[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
            for i in range(layers):
                src, dst = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
                out[f"{dst}.input_layernorm.weight"] = hf_state[f"{src}.0.layer_norm.weight"]
                attn = f"{src}.0.SelfAttention"
                out[f"{dst}.self_attention.query_key_value.weight"] = _interleave_heads(
                    [hf_state[f"{attn}.{n}.weight"] for n in "qkv"], d)
                out[f"{dst}.self_attention.dense.weight"] = hf_state[f"{attn}.o.weight"]
                if is_dec:
                    cross = f"{src}.1.EncDecAttention"
                    out[f"{dst}.post_inter_attention_layernorm.weight"] = hf_state[f"{src}.1.layer_norm.weight"]
                    out[f"{dst}.inter_attention.query.weight"] = hf_state[f"{cross}.q.weight"]
                    out[f"{dst}.inter_attention.key_value.weight"] = _interleave_heads(
                        [hf_state[f"{cross}.{n}.weight"] for n in "kv"], d)
                    out[f"{dst}.inter_attention.dense.weight"] = hf_state[f"{cross}.o.weight"]
                ff = f"{src}.{_ffn_prefix(is_dec)}"
                out[f"{dst}.post_attention_layernorm.weight"] = hf_state[f"{ff}.layer_norm.weight"]
                if gated:
                    out[f"{dst}.mlp.dense_h_to_4h.weight"] = torch.cat(
                        [hf_state[f"{ff}.DenseReluDense.wi_0.weight"], hf_state[f"{ff}.DenseReluDense.wi_1.weight"]])
                else:
                    out[f"{dst}.mlp.dense_h_to_4h.weight"] = hf_state[f"{ff}.DenseReluDense.wi.weight"]
                out[f"{dst}.mlp.dense_4h_to_h.weight"] = hf_state[f"{ff}.DenseReluDense.wo.weight"]
            out[f"{stack}.final_layernorm.weight"] = hf_state[f"{stack}.final_layer_norm.weight"]
        if not config.share_embeddings_and_output_weights:
            out["output_layer.weight"] = pad(hf_state.get("lm_head.weight", shared))
    except KeyError as missing:
        raise ValueError(f"the HF T5 state dict has no {missing.args[0]!r}; check that the config "
                         f"(layers, gated activation) matches the checkpoint.") from None
    return {k: v.clone() for k, v in out.items()}


def to_hf_state_dict(state: Dict[str, torch.Tensor], config: TransformerConfig,
                     decoder_num_layers: Optional[int] = None,
                     vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """An HF T5ForConditionalGeneration state dict from our full (TP=1) T5Model state dict.

    vocab_size: the HF vocabulary (our padding rows are dropped); default all rows."""
    if config.position_embedding_type != "t5_relative":
        raise ValueError("only T5 models with position_embedding_type='t5_relative' map to HF T5.")
    d = config.kv_channels
    dec_layers = decoder_num_layers or config.num_layers
    gated = config.gated_linear_unit
    try:
        table = state["embedding.word_embeddings.weight"]
        vocab = vocab_size or table.shape[0]
        shared = table[:vocab]
        out = {"shared.weight": shared, "encoder.embed_tokens.weight": shared,
               "decoder.embed_tokens.weight": shared}
        for stack, layers in (("encoder", config.num_layers), ("decoder", dec_layers)):
            is_dec = stack == "decoder"
            out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
                state[f"{stack}_relative_bias.weight"]
            for i in range(layers):
                src, dst = f"{stack}.layers.{i}", f"{stack}.block.{i}.layer"
                out[f"{dst}.0.layer_norm.weight"] = state[f"{src}.input_layernorm.weight"]
                q, k, v = _deinterleave_heads(state[f"{src}.self_attention.query_key_value.weight"], 3, d)
                attn = f"{dst}.0.SelfAttention"
                out.update({f"{attn}.q.weight": q, f"{attn}.k.weight": k, f"{attn}.v.weight": v,
                            f"{attn}.o.weight": state[f"{src}.self_attention.dense.weight"]})
                if is_dec:
                    cross = f"{dst}.1.EncDecAttention"
                    k, v = _deinterleave_heads(state[f"{src}.inter_attention.key_value.weight"], 2, d)
                    out.update({f"{dst}.1.layer_norm.weight": state[f"{src}.post_inter_attention_layernorm.weight"],
                                f"{cross}.q.weight": state[f"{src}.inter_attention.query.weight"],
                                f"{cross}.k.weight": k, f"{cross}.v.weight": v,
                                f"{cross}.o.weight": state[f"{src}.inter_attention.dense.weight"]})
                ff = f"{dst}.{_ffn_prefix(is_dec)}"
                out[f"{ff}.layer_norm.weight"] = state[f"{src}.post_attention_layernorm.weight"]
                up = state[f"{src}.mlp.dense_h_to_4h.weight"]
                if gated:
                    gate, lin = up.chunk(2, dim=0)
                    out[f"{ff}.DenseReluDense.wi_0.weight"] = gate
                    out[f"{ff}.DenseReluDense.wi_1.weight"] = lin
                else:
                    out[f"{ff}.DenseReluDense.wi.weight"] = up
                out[f"{ff}.DenseReluDense.wo.weight"] = state[f"{src}.mlp.dense_4h_to_h.weight"]
            out[f"{stack}.final_layer_norm.weight"] = state[f"{stack}.final_layernorm.weight"]
        out["lm_head.weight"] = shared if config.share_embeddings_and_output_weights \
            else state["output_layer.weight"][:vocab]
    except KeyError as missing:
        raise ValueError(f"our T5 state dict has no {missing.args[0]!r}; pass the full TP=1 state dict "
                         f"of a model built with this config.") from None
    return {k: v.clone() for k, v in out.items()}
