"""Between a checkpoint of ours and the HF registry: which HF mapping a saved model uses, its
ModelSpec, and the flags (args) a converted checkpoint records so the entry points rebuild it.

The family is the checkpoint's own (checkpoint/model_record.py: recorded by every writer;
a legacy file's guessed once there). The family's spec (models/registry.py) picks its HF
architecture for the config: gpt -> GPT-2, or Llama for RMSNorm/SwiGLU/rotary; bert ->
BERT, or MegatronBERT when pre-LN; roformer; t5. Transformer-XL has none (one sentence).

The model's other constructor arguments (position table, token types, heads) are read off
the tensors, so the spec describes exactly the saved model.
"""
from __future__ import annotations

import json
from typing import Mapping, Optional

import torch

from ..errors import ConversionError
from ..transformer.config import TransformerConfig
from ..models.hf.common import ModelSpec, count_layers
from ..models.hf.registry import get_mapping
from ..models.registry import get_family

TRANSFORMER_XL_SENTENCE = ("Transformer-XL has no HuggingFace class that expresses its shared relative-position "
                           "biases and segment memory (HF's TransfoXL uses adaptive softmax and another attention); "
                           "keep it in our checkpoint format and use tools/generate_text.py or the entry points.")


def hf_mapping_name(family: str, config: TransformerConfig) -> str:
    """The HF mapping of a model of our `family` with this config (one sentence if it has none)."""
    name = get_family(family).hf_mapping(config)
    if name is None:
        if family == "transformer_xl":
            raise ConversionError(TRANSFORMER_XL_SENTENCE)
        raise ConversionError(f"the {family} family has no HuggingFace mapping; keep it in our checkpoint format.")
    return name


def _rows(state: Mapping[str, torch.Tensor], key: str) -> Optional[int]:
    return state[key].shape[0] if key in state else None


def spec_of_saved(state: Mapping[str, torch.Tensor], config: TransformerConfig, vocab_size: int,
                  padded_vocab_size: int, args: Mapping, architecture: Optional[str] = None, *,
                  family: str) -> ModelSpec:
    """The ModelSpec of a whole saved model of our `family` (state: a Mapping of its full tensors)."""
    family = hf_mapping_name(family, config)
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
    if family.endswith("_classification"):      # the head's rows; the label names are the run's --class-labels
        multiple_choice = bool(args.get("multiple_choice"))
        labels = args.get("class_labels")
        kwargs.update(num_tokentypes=_rows(state, "embedding.tokentype_embeddings.weight") or 0,
                      num_classes=_rows(state, "classification_head.weight"), multiple_choice=multiple_choice,
                      labels=None if multiple_choice else (json.loads(labels) if isinstance(labels, str) else labels))
    return mapping.spec(config, vocab_size, padded_vocab_size, architecture, **kwargs)


def args_record(spec: ModelSpec, tokenizer_args: Mapping, defaults: Mapping) -> dict:
    """The flags (plain values) of the run that builds `spec`'s model: `defaults` (every flag's
    default), the model's shape, the tokenizer's flags. Fields no flag expresses are left to model_config (the loader compares it)."""
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
    )
    if spec.family == "t5":
        record.update(encoder_num_layers=config.num_layers, decoder_num_layers=spec.model_kwargs["decoder_num_layers"])
    if "add_binary_head" in spec.model_kwargs:
        record["bert_binary_head"] = bool(spec.model_kwargs["add_binary_head"])
    if "num_classes" in spec.model_kwargs:      # a classifier: finetune_classification.py's flags
        labels = spec.model_kwargs.get("labels")
        record.update(num_classes=spec.model_kwargs["num_classes"],
                      multiple_choice=bool(spec.model_kwargs.get("multiple_choice")),
                      class_labels=None if labels is None else json.dumps(list(labels), ensure_ascii=False))
    record.update(tokenizer_args)
    return record
