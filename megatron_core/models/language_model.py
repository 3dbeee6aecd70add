"""Pieces every language model shares: the pipeline stage it builds, its sharding map,
the vocab-parallel output projection, and loss-mask averaging."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from ..mpu import parallel_state as ps
from ..mpu.layout import PipelineStage
from ..mpu.mappings import gather_from_tensor_model_parallel_region
from ..mpu.sharding_map import ShardingMap, sharding_map_of

def resolve_stage(stage: Optional[PipelineStage]) -> PipelineStage:
    """The pipeline stage a model builds: the one passed, or the whole model on one stage.
    A model never takes its stage from the parallel state; under an initialized pipeline
    of several stages it refuses to guess, and the caller passes
    mpu.get_pipeline_stage(virtual_rank)."""
    if stage is not None:
        return stage
    if ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
        raise ConfigError(f"this process is one stage of a {ps.get_pipeline_model_parallel_world_size()}-stage "
                          f"pipeline; build the model with stage=mpu.get_pipeline_stage(virtual_rank).")
    return PipelineStage()


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


class ShardingMapMixin:
    """`sharding_map()`: how this chunk's state dict is split (mpu/sharding_map.py); its
    stage copies (mark_stage_copy) name their original's key in the whole model."""

    def sharding_map(self, vocab_size: Optional[int] = None) -> ShardingMap:
        """vocab_size: the true (tokenizer's) vocabulary, when known; the model's own
        vocab_size is the padded one."""
        return sharding_map_of(self, self.config.tensor_model_parallel_size, padded_vocab_size=self.vocab_size,
                               vocab_size=vocab_size)
