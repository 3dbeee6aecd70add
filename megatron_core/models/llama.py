"""Llama-style preset: a GPT with RMSNorm, SwiGLU, rotary (half-split), grouped-query
attention, no biases, no dropout, untied output layer.

    config, model = build_llama(vocab_size=32000, max_sequence_length=4096, num_layers=32,
                                hidden_size=4096, num_attention_heads=32, num_query_groups=8)

The rotary layout is the half-split one HF's LlamaForCausalLM uses, so HF q/k weights
load without permutation (models/hf/llama.py).
"""
from __future__ import annotations

from typing import Optional, Tuple

from ..mpu.layout import PipelineStage
from ..transformer.config import TransformerConfig
from .gpt import GPTModel


def llama_ffn_hidden_size(hidden_size: int, multiple_of: int = 256, ffn_dim_multiplier: Optional[float] = None) -> int:
    """Meta's rule: 2/3 of 4h, optionally scaled, rounded up to a multiple of `multiple_of`."""
    size = int(2 * 4 * hidden_size / 3)
    if ffn_dim_multiplier is not None:
        size = int(ffn_dim_multiplier * size)
    return multiple_of * ((size + multiple_of - 1) // multiple_of)


def llama_config(num_layers: int, hidden_size: int, num_attention_heads: int,
                 num_query_groups: Optional[int] = None, ffn_hidden_size: Optional[int] = None,
                 rms_norm_eps: float = 1e-5, rope_theta: float = 10000.0, **overrides) -> TransformerConfig:
    """The TransformerConfig of a Llama-style model; `overrides` set any other field
    (tensor_model_parallel_size, sequence_parallel, recompute_granularity, params_dtype, ...)."""
    values = dict(
        num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
        num_query_groups=num_query_groups,
        ffn_hidden_size=ffn_hidden_size or llama_ffn_hidden_size(hidden_size),
        normalization="RMSNorm", layernorm_epsilon=rms_norm_eps, layernorm_position="pre",
        activation="swiglu", position_embedding_type="rope", rotary_interleaved=False,
        rotary_base=rope_theta, add_bias_linear=False, add_qkv_bias=False,
        hidden_dropout=0.0, attention_dropout=0.0, share_embeddings_and_output_weights=False)
    values.update(overrides)
    return TransformerConfig(**values)


def build_llama(vocab_size: int, max_sequence_length: int, stage: Optional[PipelineStage] = None,
                **config_kwargs) -> Tuple[TransformerConfig, GPTModel]:
    """(config, model) for a Llama-style model (the pipeline chunk `stage`, by default the
    whole model); config_kwargs go to llama_config."""
    config = llama_config(**config_kwargs)
    return config, GPTModel(config, vocab_size, max_sequence_length, stage=stage)
