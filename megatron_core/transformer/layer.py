"""One transformer layer: attention and MLP sublayers around a residual stream.

    pre-LN  (GPT-2, Megatron, Llama):  x = x + drop(attn(norm1(x)));  x = x + drop(mlp(norm2(x)))
    post-LN (original BERT):           x = norm1(x + drop(attn(x)));  x = norm2(x + drop(mlp(x)))

Module names follow Megatron so checkpoints map one-to-one: pre-LN has
input_layernorm and post_attention_layernorm (the norm before the MLP); post-LN has
post_attention_layernorm and post_mlp_layernorm. A decoder layer (T5) adds
inter_attention with post_inter_attention_layernorm (pre-LN: the norm before it).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import fused
from .attention import CrossAttention, SelfAttention
from .config import TransformerConfig
from .dropout import dropout_keep_mask
from .mlp import ParallelMLP
from .norms import build_norm


def bias_dropout_add(x: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor, p: float,
                     training: bool, config: TransformerConfig) -> torch.Tensor:
    """residual + dropout(x + bias); with sequence parallelism x is this rank's chunk."""
    split_dim = 0 if config.sequence_parallel_active else None
    keep = dropout_keep_mask(x, p, training, config, split_dim=split_dim)
    return fused.bias_dropout_add(x, bias, residual, keep, p, enabled=config.fused_kernels)


class TransformerLayer(nn.Module):
    def __init__(self, config: TransformerConfig, layer_number: int, self_attn_mask_type: str = "causal",
                 has_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.layer_number = layer_number  # global, 1-based (Megatron's convention)
        self.pre_ln = config.layernorm_position == "pre"
        if self.pre_ln:
            self.input_layernorm = build_norm(config)
        self.self_attention = SelfAttention(config, layer_number, self_attn_mask_type)
        self.post_attention_layernorm = build_norm(config)
        if has_cross_attention:
            self.inter_attention = CrossAttention(config, layer_number)
            self.post_inter_attention_layernorm = build_norm(config)
        else:
            self.inter_attention = None
        self.mlp = ParallelMLP(config)
        if not self.pre_ln:
            self.post_mlp_layernorm = build_norm(config)

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, fn) -> torch.Tensor:
        config, p = self.config, self.config.hidden_dropout
        if self.pre_ln:
            normed = norm(x)
            residual = normed if config.apply_residual_connection_post_layernorm else x
            out, bias = fn(normed)
            return bias_dropout_add(out, bias, residual, p, self.training, config)
        out, bias = fn(x)
        return norm(bias_dropout_add(out, bias, x, p, self.training, config))

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                rotary_angles: Optional[torch.Tensor] = None, attention_bias: Optional[torch.Tensor] = None,
                encoder_output: Optional[torch.Tensor] = None, enc_dec_mask: Optional[torch.Tensor] = None,
                cross_attention_bias: Optional[torch.Tensor] = None, inference_context=None) -> torch.Tensor:
        """hidden_states [s(/tp with SP), b, h] -> same shape. inference_context: the KV cache
        of incremental decoding (inference/kv_cache.py), None otherwise."""
        x = hidden_states
        attn_norm = self.input_layernorm if self.pre_ln else self.post_attention_layernorm
        x = self._sublayer(x, attn_norm,
                           lambda h: self.self_attention(h, attention_mask, rotary_angles, attention_bias,
                                                         inference_context=inference_context))
        if self.inter_attention is not None:
            if encoder_output is None:
                raise ValueError("this decoder layer has cross-attention; pass encoder_output.")
            x = self._sublayer(x, self.post_inter_attention_layernorm,
                               lambda h: self.inter_attention(h, encoder_output, enc_dec_mask, cross_attention_bias,
                                                              inference_context=inference_context))
        mlp_norm = self.post_attention_layernorm if self.pre_ln else self.post_mlp_layernorm
        return self._sublayer(x, mlp_norm, self.mlp)
