"""Megatron-LM's legacy models' parameters as named_parameters lists them: the order of a legacy
`torch`-format file's optimizer positions. Transcribed by hand from megatron/legacy/model/ (not
from megatron_core's key mapping, which the tests check against it):

  GPTModel, BertModel, T5Model   language_model, then a last pipeline stage's own word table
                                 (initialize_word_embeddings; the file's word_embeddings_for_head),
                                 then BertModel's lm_head and binary_head, or T5Model's lm_head
  TransformerLanguageModel       embedding (word_embeddings, position_embeddings,
                                 tokentype_embeddings), encoder, decoder, pooler, output_layer
  ParallelTransformer            layers, then final_norm (the last stage's)
  ParallelTransformerLayer       input_norm, self_attention, post_attention_norm,
                                 inter_attention, post_inter_attention_norm, mlp
  ParallelAttention              query_key_value (cross-attention: query, key_value), then dense
  ParallelMLP                    dense_h_to_4h, dense_4h_to_h
  BertLMHead                     its bias, then dense, then norm; T5LMHead: its bias
  Linear and norm modules        weight, then bias

The files spell the norms *_layernorm (the names older Megatron-LM wrote and newer reads). A
decoder layer's post_attention_norm runs before inter_attention and its
post_inter_attention_norm before the MLP: megatron-core's pre_cross_attn_layernorm and
pre_mlp_layernorm. `flattened` gives a file's nested model dict dotted keys, in its order.
"""
from __future__ import annotations

from typing import List, Tuple

# (legacy module, megatron-core module) inside one layer, in registration order
ENCODER_LAYER = [("input_layernorm", "input_layernorm"), ("self_attention.query_key_value", "self_attention.linear_qkv"),
                 ("self_attention.dense", "self_attention.linear_proj"), ("post_attention_layernorm", "pre_mlp_layernorm"),
                 ("mlp.dense_h_to_4h", "mlp.linear_fc1"), ("mlp.dense_4h_to_h", "mlp.linear_fc2")]
DECODER_LAYER = [("input_layernorm", "input_layernorm"), ("self_attention.query_key_value", "self_attention.linear_qkv"),
                 ("self_attention.dense", "self_attention.linear_proj"),
                 ("post_attention_layernorm", "pre_cross_attn_layernorm"),
                 ("inter_attention.query", "cross_attention.linear_q"),
                 ("inter_attention.key_value", "cross_attention.linear_kv"),
                 ("inter_attention.dense", "cross_attention.linear_proj"),
                 ("post_inter_attention_layernorm", "pre_mlp_layernorm"),
                 ("mlp.dense_h_to_4h", "mlp.linear_fc1"), ("mlp.dense_4h_to_h", "mlp.linear_fc2")]


def _stack(legacy: str, mcore: str, layer, layers: int, last_stage: bool):
    out = [(f"{legacy}.layers.{i}.{a}", f"{mcore}.layers.{i}.{b}") for i in range(layers) for a, b in layer]
    return out + ([(f"{legacy}.final_layernorm", f"{mcore}.final_layernorm")] if last_stage else [])


def _modules(model: str, layers: int, first_stage: bool, last_stage: bool):
    out = [("language_model.embedding.word_embeddings", "embedding.word_embeddings"),
           ("language_model.embedding.position_embeddings", "embedding.position_embeddings"),
           ("language_model.embedding.tokentype_embeddings", "embedding.tokentype_embeddings")] if first_stage else []
    stack = "decoder" if model in ("gpt", "llama") else "encoder"
    out += _stack("language_model.encoder", stack, ENCODER_LAYER, layers, last_stage)
    if model == "t5":
        out += _stack("language_model.decoder", "decoder", DECODER_LAYER, layers, last_stage)
    if not last_stage:
        return out
    if model == "bert":
        out.append(("language_model.pooler.dense", "pooler.dense"))
    if model in ("gpt", "llama"):
        out.append(("language_model.output_layer", "output_layer"))
    if not first_stage:         # a tied last stage's own copy of the word table
        out.append(("word_embeddings_for_head", "output_layer"))
    if model == "bert":
        out += [("lm_head.bias", "output_layer.bias"), ("lm_head.dense", "lm_head.dense"),
                ("lm_head.layernorm", "lm_head.layer_norm"), ("binary_head", "binary_head")]
    if model == "t5":
        out.append(("lm_head.bias", "lm_head.output_layer.bias"))
    return out


def legacy_named_parameters(model: str, layers: int = 2, first_stage: bool = True,
                            last_stage: bool = True) -> List[Tuple[str, str]]:
    """[(flattened legacy key, megatron-core name)] of one pipeline stage of `model` ("gpt",
    "llama", "bert", "t5"; `layers` of its own) in named_parameters order, every module's
    weight and bias: callers keep those the stage holds (a Llama has no biases or position
    table, a tied GPT no output layer)."""
    out = []
    for legacy, mcore in _modules(model, layers, first_stage, last_stage):
        if legacy.endswith(".bias"):
            out.append((legacy, mcore))
        else:
            out += [(f"{legacy}.{leaf}", f"{mcore}.{leaf}") for leaf in ("weight", "bias")]
    return out


def flattened(nested, prefix: str = "") -> dict:
    """A legacy file's nested model dict with dotted keys, in the file's order."""
    out = {}
    for key, value in nested.items():
        out.update(flattened(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out
