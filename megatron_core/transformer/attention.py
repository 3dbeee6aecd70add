"""Tensor-parallel self- and cross-attention.

Fused QKV layout (Megatron's, what checkpoint converters must produce). With h heads of
size d in g query groups (h/g query heads per key/value head), the full
query_key_value weight has (h + 2g) * d rows ordered group by group:

    [ q heads of group 0 (h/g * d rows) | k of group 0 (d) | v of group 0 (d) |
      q heads of group 1 ...            | k of group 1     | v of group 1     | ... ]

Plain multi-head attention is the case g = h: [q0 k0 v0 | q1 k1 v1 | ...]. Because each
group is contiguous, the column-parallel split (contiguous rows per rank) hands every
rank whole groups with their query heads (stride 1 in mpu.layout.shard_tensor), and TP
shards are slices of the serial weight.
Cross-attention has a `query` projection (h * d rows, head order) and a fused
`key_value` projection laid out [k0 v0 | k1 v1 | ...] per group.

Incremental decoding passes an `inference_context` (inference/kv_cache.py, as
megatron/core's InferenceParams): self-attention appends this step's keys and values
(after rotary, only the kv heads of grouped-query attention) to the context's cache and
attends over all of it; cross-attention projects the encoder output once and reuses it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..mpu import parallel_state as ps
from ..mpu.layers import ColumnParallelLinear, RowParallelLinear
from ..mpu.random import checkpoint
from ..mpu.utils import divide
from .config import TransformerConfig
from .core_attention import CoreAttention
from .init import init_method, output_init_method
from .rotary import apply_rotary


class _Attention(nn.Module):
    """What self- and cross-attention share: core attention and the output projection."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: str):
        super().__init__()
        self.config = config
        self.layer_number = layer_number
        world = ps.get_tensor_model_parallel_world_size()
        self.heads_per_rank = divide(config.num_attention_heads, world, "num_attention_heads")
        self.groups_per_rank = divide(config.num_query_groups, world, "num_query_groups")
        self.heads_per_group = config.num_attention_heads // config.num_query_groups
        self.head_dim = config.kv_channels
        self.core_attention = CoreAttention(config, layer_number, attn_mask_type)
        self.dense = RowParallelLinear(
            config.query_projection_size, config.hidden_size, bias=config.add_bias_linear,
            input_is_parallel=True, init_method=output_init_method(config), skip_bias_add=True,
            params_dtype=config.params_dtype, sequence_parallel=config.sequence_parallel,
            fold_skipped_bias_off_gpu=True)

    def _attend(self, q, k, v, attention_mask, attention_bias):
        if self.config.recompute_granularity == "selective":
            # Selective recomputation: the attention scores/probs are the large
            # activations (b * heads * s^2) and cheap to recompute.
            return checkpoint(self.core_attention, q, k, v, attention_mask, attention_bias)
        return self.core_attention(q, k, v, attention_mask, attention_bias)


class SelfAttention(_Attention):
    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: str = "padding"):
        super().__init__(config, layer_number, attn_mask_type)
        self.query_key_value = ColumnParallelLinear(
            config.hidden_size, config.query_projection_size + 2 * config.kv_projection_size,
            bias=config.add_qkv_bias, gather_output=False, init_method=init_method(config),
            params_dtype=config.params_dtype, sequence_parallel=config.sequence_parallel)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                rotary_angles: Optional[torch.Tensor] = None, attention_bias: Optional[torch.Tensor] = None,
                inference_context=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """hidden_states [s(/tp with SP), b, h] -> (output, bias to add later)."""
        mixed, _ = self.query_key_value(hidden_states)  # [s, b, groups_per_rank * (h/g + 2) * d]
        s, b = mixed.shape[:2]
        d, hpg = self.head_dim, self.heads_per_group
        mixed = mixed.view(s, b, self.groups_per_rank, (hpg + 2) * d)
        q, k, v = torch.split(mixed, [hpg * d, d, d], dim=-1)
        q = q.reshape(s, b, self.heads_per_rank, d)
        if rotary_angles is not None:
            # Queries and keys rotate by the same angles: one call over both heads' sets.
            qk = apply_rotary(torch.cat([q, k], dim=2), rotary_angles, self.config.rotary_interleaved,
                              self.config.fused_kernels)
            q, k = qk.split([self.heads_per_rank, self.groups_per_rank], dim=2)
        if inference_context is not None:
            k, v = inference_context.append_key_value(self.layer_number, k, v)
        context = self._attend(q, k, v, attention_mask, attention_bias)
        return self.dense(context)

    def _project_key_value(self, encoder_output: torch.Tensor):
        kv, _ = self.key_value(encoder_output)
        sk, b = kv.shape[:2]
        return kv.view(sk, b, self.groups_per_rank, 2 * self.head_dim).chunk(2, dim=-1)


class CrossAttention(_Attention):
    """Queries from the decoder, keys and values from the encoder output (T5)."""

    def __init__(self, config: TransformerConfig, layer_number: int):
        super().__init__(config, layer_number, "padding")
        self.query = ColumnParallelLinear(
            config.hidden_size, config.query_projection_size, bias=config.add_qkv_bias, gather_output=False,
            init_method=init_method(config), params_dtype=config.params_dtype,
            sequence_parallel=config.sequence_parallel)
        self.key_value = ColumnParallelLinear(
            config.hidden_size, 2 * config.kv_projection_size, bias=config.add_qkv_bias, gather_output=False,
            init_method=init_method(config), params_dtype=config.params_dtype,
            sequence_parallel=config.sequence_parallel)

    def forward(self, hidden_states: torch.Tensor, encoder_output: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, attention_bias: Optional[torch.Tensor] = None,
                inference_context=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, _ = self.query(hidden_states)
        sq, b = q.shape[:2]
        q = q.view(sq, b, self.heads_per_rank, self.head_dim)
        if inference_context is not None:
            k, v = inference_context.cross_key_value(self.layer_number, lambda: self._project_key_value(encoder_output))
        else:
            k, v = self._project_key_value(encoder_output)
        context = self._attend(q, k, v, attention_mask, attention_bias)
        return self.dense(context)

    def _project_key_value(self, encoder_output: torch.Tensor):
        kv, _ = self.key_value(encoder_output)
        sk, b = kv.shape[:2]
        return kv.view(sk, b, self.groups_per_rank, 2 * self.head_dim).chunk(2, dim=-1)
