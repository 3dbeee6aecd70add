"""Pieces every language model shares: which layers a pipeline stage owns, the
vocab-parallel output projection, and loss-mask averaging."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..mpu import parallel_state as ps
from ..mpu.mappings import gather_from_tensor_model_parallel_region
from ..transformer.config import ConfigError


def stage_layer_range(num_layers: int, pipeline_size: int = 1, pipeline_rank: int = 0,
                      virtual_size: Optional[int] = None, virtual_rank: Optional[int] = None) -> Tuple[int, int]:
    """(layer_offset, num_layers) of the model chunk a (pipeline rank, virtual rank) owns.

    Megatron's even split. Without virtual stages rank r owns layers r*L/p .. (r+1)*L/p - 1.
    With v virtual stages the model is cut into p*v chunks of L/(p*v) layers, dealt out
    round-robin: chunk (virtual rank j, pipeline rank r) starts at j*L/v + r*L/(p*v). E.g.
    L=8, p=2, v=2: rank 0 holds layers [0,1] and [4,5], rank 1 holds [2,3] and [6,7].
    Offsets are global, 0-based (layer numbers inside the block are offset + 1 ...).
    """
    chunks = pipeline_size * (virtual_size or 1)
    if not 0 <= pipeline_rank < pipeline_size:
        raise ConfigError(f"pipeline rank {pipeline_rank} is outside a pipeline of {pipeline_size} stages.")
    if num_layers % chunks != 0:
        what = (f"pipeline_model_parallel_size ({pipeline_size}) x virtual_pipeline_model_parallel_size "
                f"({virtual_size})" if virtual_size else f"pipeline_model_parallel_size ({pipeline_size})")
        raise ConfigError(f"num_layers ({num_layers}) is not divisible by {what}; every stage needs the same "
                          f"number of layers.")
    per_chunk = num_layers // chunks
    if virtual_size:
        if virtual_rank is None or not 0 <= virtual_rank < virtual_size:
            raise ConfigError(f"virtual rank {virtual_rank} is outside {virtual_size} virtual stages.")
        return virtual_rank * (num_layers // virtual_size) + pipeline_rank * per_chunk, per_chunk
    return pipeline_rank * per_chunk, per_chunk


def current_stage_layer_range(num_layers: int) -> Tuple[int, int]:
    """stage_layer_range for this process, from the initialized parallel state (the
    virtual rank is the one set with mpu.set_virtual_pipeline_model_parallel_rank)."""
    if not ps.model_parallel_is_initialized():
        return 0, num_layers
    virtual_size = ps.get_virtual_pipeline_model_parallel_world_size()
    virtual_rank = ps.get_virtual_pipeline_model_parallel_rank() if virtual_size else None
    if virtual_size and virtual_rank is None:
        virtual_rank = 0
    return stage_layer_range(num_layers, ps.get_pipeline_model_parallel_world_size(),
                             ps.get_pipeline_model_parallel_rank(), virtual_size, virtual_rank)


def resolve_stage_layers(num_layers: int, layer_offset: Optional[int] = None,
                         num_layers_in_stage: Optional[int] = None) -> Tuple[int, int]:
    """(first layer, layer count) a model stage builds: by default this process's stage of
    Megatron's even split (current_stage_layer_range); an explicit offset without a count
    takes a stage's share, or all remaining layers if fewer are left."""
    stage_offset, stage_layers = current_stage_layer_range(num_layers)
    if layer_offset is None:
        layer_offset = stage_offset
    if num_layers_in_stage is None:
        num_layers_in_stage = min(stage_layers, num_layers - layer_offset)
    return layer_offset, num_layers_in_stage


def gather_logits(vocab_parallel_logits: torch.Tensor) -> torch.Tensor:
    """[..., V/tp] on every rank -> [..., V] (for sampling or export, not for the loss)."""
    return gather_from_tensor_model_parallel_region(vocab_parallel_logits)


def masked_mean(per_token_loss: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Average of the per-token loss over the tokens where loss_mask is 1 (all if None).

    Summed in fp32. A batch with no counted token gives 0 (not NaN), so an all-padding
    microbatch does not poison the step.
    """
    loss = per_token_loss.float()
    if loss_mask is None:
        return loss.mean()
    mask = loss_mask.to(loss.dtype).reshape(loss.shape)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


class TiedOutputLayerMixin:
    """`output_weight()` for language models whose last stage computes logits with an
    `output_layer` (ColumnParallelLinear) that either owns its weight or, with
    `share_embeddings_and_output_weights`, multiplies by `word_embeddings_weight()`."""

    def output_weight(self) -> Optional[torch.Tensor]:
        if not self.post_process:
            return None
        if self.share_embeddings_and_output_weights:
            return self.word_embeddings_weight()
        return self.output_layer.weight
