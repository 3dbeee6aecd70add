"""Between a checkpoint of ours and the HF registry: which family a saved model is, its
ModelSpec, and the flags (args) a converted checkpoint records so the entry points rebuild it.

A checkpoint stores the TransformerConfig, both vocabulary sizes and the weights, not the
family (an entry point's choice). The family is read off the whole model's keys and config:

    r_w_bias                          Transformer-XL (no HF class expresses it: one sentence)
    encoder.* and decoder.*           T5
    encoder.*, rotary positions       RoFormer
    encoder.*, pre-LN / post-LN       MegatronBERT / BERT
    decoder.*, RMSNorm/SwiGLU/rotary  Llama, else GPT-2

The model's other constructor arguments (position table, token types, heads) are read off
the tensors, so the spec describes exactly the saved model.
"""
from __future__ import annotations

from typing import Collection, Mapping, Optional

import torch

from ..errors import ConversionError
from ..transformer.config import TransformerConfig
from ..models.hf.common import ModelSpec, count_layers
from ..models.hf.registry import get_mapping

TRANSFORMER_XL_SENTENCE = ("Transformer-XL has no HuggingFace class that expresses its shared relative-position "
                           "biases and segment memory (HF's TransfoXL uses adaptive softmax and another attention); "
                           "keep it in our checkpoint format and use tools/generate_text.py or the entry points.")


def family_of(keys: Collection[str], config: TransformerConfig) -> str:
    """Our family name of a whole model's state dict (see the module docstring)."""
    if "r_w_bias" in keys or any(k.endswith("self_attention.r_w_bias") for k in keys):
        raise ConversionError(TRANSFORMER_XL_SENTENCE)
    encoder = any(k.startswith("encoder.") for k in keys)
    decoder = any(k.startswith("decoder.") for k in keys)
    if encoder and decoder:
        return "t5"
    if encoder:
        if config.position_embedding_type == "rope":
            return "roformer"
        return "megatron_bert" if config.layernorm_position == "pre" else "bert"
    if decoder:
        llama_like = (config.normalization == "RMSNorm" or config.activation == "swiglu"
                      or config.position_embedding_type == "rope")
        return "llama" if llama_like else "gpt"
    raise ConversionError(f"the checkpoint's model has keys like {sorted(keys)[:3]}, which match no family with an "
                          f"HF mapping; is it a checkpoint of this package?")


def _rows(state: Mapping[str, torch.Tensor], key: str) -> Optional[int]:
    return state[key].shape[0] if key in state else None


def spec_of_saved(state: Mapping[str, torch.Tensor], config: TransformerConfig, vocab_size: int,
                  padded_vocab_size: int, args: Mapping, architecture: Optional[str] = None) -> ModelSpec:
    """The ModelSpec of a whole saved model (state: a Mapping of its full tensors)."""
    family = family_of(list(state), config)
    mapping = get_mapping(family)
    positions = _rows(state, "embedding.position_embeddings.weight") or args.get("max_position_embeddings") \
        or args.get("seq_length") or 512
    kwargs = dict(max_sequence_length=positions)
    if family in ("bert", "megatron_bert", "roformer"):
        binary = "binary_head.weight" in state
        kwargs.update(num_tokentypes=_rows(state, "embedding.tokentype_embeddings.weight") or 0,
                      add_binary_head=binary, add_pooler="pooler.dense.weight" in state)
        if architecture is None and family != "roformer":
            prefix = "MegatronBert" if family == "megatron_bert" else "Bert"
            architecture = f"{prefix}ForPreTraining" if binary else f"{prefix}ForMaskedLM"
        if kwargs["num_tokentypes"] == 0 and family != "roformer":
            raise ConversionError("this BERT has no token-type table (trained with --bert-no-binary-head), which HF "
                                  "BERT classes always have; export a model trained with the binary head.")
    if family == "t5":
        kwargs["decoder_num_layers"] = count_layers(state, "decoder.layers.")
    return mapping.spec(config, vocab_size, padded_vocab_size, architecture, **kwargs)


def args_record(spec: ModelSpec, tokenizer_args: Mapping, defaults: Mapping) -> dict:
    """The flags (plain values) of the run that builds `spec`'s model: `defaults` (every flag's
    default), the model's shape, the tokenizer's flags. Fields no flag expresses are left to
    model_config (the loader compares it)."""
    config = spec.config
    record = dict(defaults)
    record.update(
        num_layers=config.num_layers, hidden_size=config.hidden_size, ffn_hidden_size=config.ffn_hidden_size,
        num_attention_heads=config.num_attention_heads, kv_channels=config.kv_channels,
        group_query_attention=config.num_query_groups != config.num_attention_heads,
        num_query_groups=config.num_query_groups,
        max_position_embeddings=spec.model_kwargs.get("max_sequence_length"),
        position_embedding_type=config.position_embedding_type, rotary_percent=config.rotary_percent,
        rotary_interleaved=config.rotary_interleaved, rotary_base=int(config.rotary_base),
        normalization=config.normalization, norm_epsilon=config.layernorm_epsilon,
        layernorm_position=config.layernorm_position,
        apply_residual_connection_post_layernorm=config.apply_residual_connection_post_layernorm,
        swiglu=config.activation == "swiglu", openai_gelu=config.activation == "gelu_tanh",
        untie_embeddings_and_output_weights=not config.share_embeddings_and_output_weights,
        add_bias_linear=config.add_bias_linear, add_qkv_bias=bool(config.add_qkv_bias),
        hidden_dropout=config.hidden_dropout, attention_dropout=config.attention_dropout,
        init_method_std=config.init_method_std, make_vocab_size_divisible_by=config.make_vocab_size_divisible_by,
        model_family=spec.family,
    )
    if spec.family == "t5":
        record.update(encoder_num_layers=config.num_layers, decoder_num_layers=spec.model_kwargs["decoder_num_layers"])
    if "add_binary_head" in spec.model_kwargs:
        record["bert_binary_head"] = bool(spec.model_kwargs["add_binary_head"])
    record.update(tokenizer_args)
    return record
