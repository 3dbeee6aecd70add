"""Transformer-XL relative self-attention, tensor-parallel (heads split across ranks).

For query i of the current segment (absolute position m + i after m memory positions)
and key j of [memory + segment] (k = m + s keys), with R the sinusoid embedding of the
distance i + m - j:

    score[i, j] = ((q_i + u) . k_j  +  (q_i + v) . (W_r R[i + m - j] + b_r)) / sqrt(d)
                    term (a)+(c)          term (b)+(d)        (Dai et al., 2019)

u = r_w_bias and v = r_r_bias are per head [heads, d]. Keys at distance < 0 (the future)
are masked. Term (b)+(d) is computed against R for the k distances k-1 .. 0 (one matmul)
and then "rel-shifted" so row i is aligned to distances i + m - j. Masked scores are
-10000, softmax in fp32, as in Chinese-Transformer-XL.

Each rank holds whole heads: query_key_value (our per-head layout [q0 k0 v0 | q1 k1 v1 ...]),
`relative` (W_r, rows by head) and the u, v rows of its heads; `dense` is row-parallel.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..mpu import parallel_state as ps
from ..mpu.layers import ColumnParallelLinear, RowParallelLinear, default_device
from ..mpu.utils import divide
from ..transformer.config import TransformerConfig
from ..transformer.core_attention import causal_mask
from ..transformer.dropout import dropout
from ..transformer.init import init_method, output_init_method

# Chinese-Transformer-XL's fill for masked scores (every row keeps its own position).
MASKED_SCORE = -10000.0


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """[..., q, k] scores against distances (k-1 .. 0) -> row i aligned so that column j
    holds distance (k - q) + i - j. Entries with a negative distance hold junk (mask them)."""
    *lead, q, k = scores.shape
    padded = torch.cat([scores.new_zeros(*lead, q, 1), scores], dim=-1)  # [..., q, k + 1]
    return padded.view(*lead, k + 1, q)[..., 1:, :].reshape(*lead, q, k)


def new_relative_bias(config: TransformerConfig) -> nn.Parameter:
    """u or v for this rank's heads, [heads/tp, d], zero (Chinese-Transformer-XL's init)."""
    heads = divide(config.num_attention_heads, ps.get_tensor_model_parallel_world_size(), "num_attention_heads")
    param = nn.Parameter(torch.zeros(heads, config.kv_channels, dtype=config.params_dtype, device=default_device()))
    param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, 0, 1
    return param


class RelativeSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig, layer_number: int, own_biases: bool = False):
        super().__init__()
        self.config = config
        self.layer_number = layer_number
        world = ps.get_tensor_model_parallel_world_size()
        self.heads_per_rank = divide(config.num_attention_heads, world, "num_attention_heads")
        self.head_dim = config.kv_channels
        projection = config.query_projection_size
        self.query_key_value = ColumnParallelLinear(
            config.hidden_size, 3 * projection, bias=config.add_qkv_bias, gather_output=False,
            init_method=init_method(config), params_dtype=config.params_dtype)
        self.relative = ColumnParallelLinear(
            config.hidden_size, projection, bias=config.add_bias_linear, gather_output=False,
            init_method=init_method(config), params_dtype=config.params_dtype)
        self.dense = RowParallelLinear(
            projection, config.hidden_size, bias=config.add_bias_linear, input_is_parallel=True,
            init_method=output_init_method(config), skip_bias_add=True, params_dtype=config.params_dtype)
        # untie_r: every layer has its own u, v; otherwise the model passes shared ones.
        if own_biases:
            self.r_w_bias = new_relative_bias(config)
            self.r_r_bias = new_relative_bias(config)
        else:
            self.r_w_bias = self.r_r_bias = None

    def forward(self, hidden_states: torch.Tensor, memory: Optional[torch.Tensor], position_embeddings: torch.Tensor,
                r_w_bias: Optional[torch.Tensor] = None, r_r_bias: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """hidden_states [s, b, h], memory [m, b, h] or None (both already normed),
        position_embeddings [m + s, h] for distances m + s - 1 .. 0; attention_mask bool
        (True = masked) broadcastable to [b, heads, s, m + s], added to the causal mask."""
        u = self.r_w_bias if self.r_w_bias is not None else r_w_bias
        v = self.r_r_bias if self.r_r_bias is not None else r_r_bias
        if u is None or v is None:
            raise ValueError("relative attention needs r_w_bias and r_r_bias (shared ones from the model).")
        s, b = hidden_states.shape[:2]
        full = hidden_states if memory is None else torch.cat([memory, hidden_states], dim=0)
        k_len = full.shape[0]
        n, d = self.heads_per_rank, self.head_dim
        mixed, _ = self.query_key_value(full)  # [k, b, n * 3d]
        q, key, value = mixed.view(k_len, b, n, 3 * d).split(d, dim=-1)
        q = q[-s:]
        r, _ = self.relative(position_embeddings)  # [k, n * d]
        r = r.view(k_len, n, d)

        content = torch.einsum("ibnd,jbnd->bnij", q + u, key)
        position = rel_shift(torch.einsum("ibnd,jnd->bnij", q + v, r))
        scores = content + position
        if self.config.attention_softmax_in_fp32:
            scores = scores.float()
        scale = self.config.softmax_scale if self.config.softmax_scale is not None else 1.0 / math.sqrt(d)
        scores = scores * scale
        mask = causal_mask(s, k_len, scores.device)
        if attention_mask is not None:
            mask = mask | attention_mask
        scores = scores.masked_fill(mask, MASKED_SCORE)
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        probs = dropout(probs, self.config.attention_dropout, self.training, self.config, split_dim=1)
        context = torch.einsum("bnij,jbnd->ibnd", probs, value).reshape(s, b, n * d)
        return self.dense(context)
