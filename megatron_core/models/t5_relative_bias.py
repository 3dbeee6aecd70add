"""T5's relative position bias: a learned scalar per (distance bucket, head) added to q.k.

The distance `key - query` is mapped to one of `num_buckets` buckets (Mesh TensorFlow's
scheme, as in HF T5): half of the buckets hold exact small distances, the other half
cover distances up to `max_distance` on a log scale, anything farther shares the last
bucket. The encoder is bidirectional (half the buckets for keys after the query, half
for keys before); the decoder is causal (all buckets for keys at or before the query).

One table per stack (encoder, decoder), used by every layer of that stack: the bias is
computed once per forward and handed to all layers as `attention_bias`. The table
[num_buckets, heads] is split by heads across tensor-parallel ranks (columns), in the
same contiguous head order as the attention, so each rank adds the bias of its own heads
and TP shards are slices of the serial table.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..mpu import parallel_state as ps
from ..mpu.init_methods import initialize_affine_weight
from ..mpu.layers import default_device
from ..mpu.utils import divide
from ..transformer.config import TransformerConfig
from ..transformer.init import init_method


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bucket index (long, in [0, num_buckets)) of each `key - query` distance."""
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        # Causal: only keys at or before the query have a bucket of their own.
        distance = (-relative_position).clamp(min=0)
    exact = num_buckets // 2
    is_small = distance < exact
    # Log-spaced buckets for exact <= distance < max_distance (clamp avoids log(0); those
    # entries take the exact branch anyway).
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class T5RelativePositionBias(nn.Module):
    """Bias [1, heads/tp, q, k] for one stack; `weight` is [num_buckets, heads/tp]."""

    def __init__(self, config: TransformerConfig, bidirectional: bool):
        super().__init__()
        if config.relative_attention_num_buckets < 2 or config.relative_attention_max_distance < 2:
            raise ValueError("relative_attention_num_buckets and relative_attention_max_distance must be at "
                             "least 2.")
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        heads = config.num_attention_heads
        heads_per_rank = divide(heads, ps.get_tensor_model_parallel_world_size(), "num_attention_heads")
        self.weight = nn.Parameter(torch.empty(self.num_buckets, heads_per_rank, dtype=config.params_dtype,
                                               device=default_device()))
        # Draws the full [buckets, heads] table and keeps this rank's heads (columns).
        initialize_affine_weight(self.weight, (self.num_buckets, heads), 1, init_method(config))

    def forward(self, query_length: int, key_length: int) -> torch.Tensor:
        device = self.weight.device
        query_pos = torch.arange(query_length, device=device)[:, None]
        key_pos = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(key_pos - query_pos, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        values = self.weight[buckets]  # [q, k, heads/tp]
        return values.permute(2, 0, 1).unsqueeze(0)

    def extra_repr(self) -> str:
        return (f"num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"bidirectional={self.bidirectional}, heads_here={self.weight.shape[1]}")
