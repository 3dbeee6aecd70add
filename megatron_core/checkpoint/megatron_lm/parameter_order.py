"""The order in which Megatron-LM's models register their parameters (named_parameters).

Megatron-LM's optimizer numbers its positions through the model's named_parameters, so a
`torch`-format file's optimizer state is only read right, and only loads right into
Megatron-LM, in this order. A module's weight comes before its bias throughout.

megatron-core (mcore_parameter_order; megatron-core's names):
    embedding.word_embeddings, embedding.position_embeddings, embedding.tokentype_embeddings,
    encoder.layers.N..., encoder.final_layernorm, decoder.layers.N..., decoder.final_layernorm,
    lm_head.dense, lm_head.layer_norm, output_layer, binary_head, pooler
  inside a layer: input_layernorm, self_attention.linear_proj, self_attention.linear_qkv,
    pre_cross_attn_layernorm, cross_attention.linear_proj / linear_q / linear_kv,
    pre_mlp_layernorm, mlp.linear_fc1, mlp.linear_fc2
    (an attention module registers its output projection before its input projections)

legacy (megatron/legacy/model; legacy_parameter_order; the flattened keys of a legacy file):
GPTModel, BertModel and T5Model register language_model first, a last pipeline stage's own
copy of the word table (the file's word_embeddings_for_head) next, then their heads:
    language_model.embedding.word_embeddings, .position_embeddings, .tokentype_embeddings,
    language_model.encoder.layers.N..., language_model.encoder.final_norm,
    language_model.decoder.layers.N..., language_model.decoder.final_norm,
    language_model.pooler.dense, language_model.output_layer,
    word_embeddings_for_head,
    lm_head.bias, lm_head.dense, lm_head.norm (BERT's head registers its bias first; T5's head
    is the bias alone), binary_head
  inside a ParallelTransformerLayer: input_norm, self_attention.query_key_value,
    self_attention.dense, post_attention_norm, inter_attention.query / key_value / dense,
    post_inter_attention_norm, mlp.dense_h_to_4h, mlp.dense_4h_to_h
    (ParallelAttention registers query_key_value before dense, unlike megatron-core)
Older legacy files call the norms *_layernorm and the encoder `transformer`; both spellings sort
alike. A legacy file nests its model by state_dict_for_save_checkpoint, which puts a BERT last
stage's word_embeddings_for_head after the heads: its dict order is not its positions' order.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

_MCORE_OUTSIDE = ("embedding.word_embeddings.", "embedding.position_embeddings.", "embedding.tokentype_embeddings.",
                  "encoder.", "decoder.", "lm_head.dense.", "lm_head.layer_norm.", "output_layer.", "binary_head.",
                  "pooler.")
_MCORE_STACKS = ("encoder.", "decoder.")
_MCORE_LAYER = ("input_layernorm.", "self_attention.linear_proj.", "self_attention.linear_qkv.",
                "pre_cross_attn_layernorm.", "cross_attention.linear_proj.", "cross_attention.linear_q.",
                "cross_attention.linear_kv.", "pre_mlp_layernorm.", "mlp.linear_fc1.", "mlp.linear_fc2.")

_LEGACY_OUTSIDE = ("language_model.embedding.word_embeddings.", "language_model.embedding.position_embeddings.",
                   "language_model.embedding.tokentype_embeddings.", "language_model.encoder.",
                   "language_model.transformer.", "language_model.decoder.", "language_model.pooler.",
                   "language_model.output_layer.", "word_embeddings_for_head.", "lm_head.bias", "lm_head.dense.",
                   "lm_head.norm.", "lm_head.layernorm.", "binary_head.")
_LEGACY_STACKS = ("language_model.encoder.", "language_model.transformer.", "language_model.decoder.")
_LEGACY_LAYER = ("input_norm.", "input_layernorm.", "self_attention.query_key_value.", "self_attention.dense.",
                 "post_attention_norm.", "post_attention_layernorm.", "inter_attention.query.",
                 "inter_attention.key_value.", "inter_attention.dense.", "post_inter_attention_norm.",
                 "post_inter_attention_layernorm.", "mlp.dense_h_to_4h.", "mlp.dense_4h_to_h.")

_LAYER_KEY = re.compile(r"^(.*)layers\.(\d+)\.(.*)$")
_AFTER_LAYERS = 1 << 30


def _position(prefixes: Sequence[str], name: str) -> int:
    return next((i for i, prefix in enumerate(prefixes) if name.startswith(prefix)), len(prefixes))


def _in_order(names: Sequence[str], outside: Sequence[str], stacks: Sequence[str],
              layer_parts: Sequence[str]) -> List[str]:
    def key(name: str) -> Tuple[int, int, int, bool]:
        layer = _LAYER_KEY.match(name)
        if layer and layer.group(1) in stacks:
            stack, index, rest = layer.groups()
            return _position(outside, stack), int(index), _position(layer_parts, rest), rest.endswith(".bias")
        after_layers = name.startswith(tuple(stacks))       # a stack's final norm follows its layers
        return _position(outside, name), _AFTER_LAYERS if after_layers else -1, 0, name.endswith(".bias")
    return sorted(names, key=key)


def mcore_parameter_order(names: Sequence[str]) -> List[str]:
    """megatron-core names in its model's named_parameters order."""
    return _in_order(names, _MCORE_OUTSIDE, _MCORE_STACKS, _MCORE_LAYER)


def legacy_parameter_order(names: Sequence[str]) -> List[str]:
    """Flattened legacy names (language_model.encoder.layers.0. ...) in the legacy model's
    named_parameters order."""
    return _in_order(names, _LEGACY_OUTSIDE, _LEGACY_STACKS, _LEGACY_LAYER)


__all__ = ["mcore_parameter_order", "legacy_parameter_order"]
