"""GPT: a causal language model on the tensor-parallel transformer.

    model = GPTModel(config, vocab_size=padded_vocab, max_sequence_length=1024)
    loss = model(tokens, position_ids, attention_mask=None, labels=labels)   # [b, s] fp32
    loss = masked_mean(loss, loss_mask)

Logits stay split over the vocabulary ([b, s, V/tp] on each rank) and go straight into
vocab_parallel_cross_entropy; nothing gathers the full vocabulary.

Pipeline stages. The model builds the chunk `stage` (an mpu.PipelineStage, by default the
whole model; a pipeline passes mpu.get_pipeline_stage(virtual_rank)). The first chunk
(`pre_process`) builds the embedding, the last (`post_process`) the final norm and the
output layer; a middle chunk has neither and receives its input through
`set_input_tensor`. Each chunk builds only its layers, Megatron's even split
(stage.layer_range); layer numbers stay global and every component has its own seed, so
a chunk holds exactly the serial model's weights. `sharding_map()` says how its state
dict maps to the whole model's (mpu/sharding_map.py).

Tied input/output embedding: on a single stage the output layer multiplies by the word
embedding table itself. On a last stage without the embedding, a copy of the table is
built from the same component seed (so it starts equal to the first stage's) and marked
as a stage copy the first stage owns (pipeline/chunk.py): the pipeline code sums its
gradient with the first stage's, and gradient-norm code counts it once.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..mpu.cross_entropy import vocab_parallel_cross_entropy
from ..mpu.init_methods import mark_vocab_parallel
from ..mpu.layers import ColumnParallelLinear
from ..mpu.layout import PipelineStage
from ..transformer.block import TransformerBlock
from ..transformer.config import ConfigError, TransformerConfig
from ..transformer.init import component_rng, init_method
from ..transformer.rotary import RotaryEmbedding
from . import flops
from ..pipeline.chunk import PipelineChunkMixin
from .embedding import LanguageEmbedding, build_word_embeddings_copy
from .language_model import ShardingMapMixin, TiedOutputLayerMixin, gather_logits, masked_mean, resolve_stage

__all__ = ["GPTModel", "masked_mean"]


def check_vocab_size(config: TransformerConfig, vocab_size: int) -> None:
    if vocab_size % config.tensor_model_parallel_size != 0:
        raise ConfigError(
            f"vocab_size ({vocab_size}) is not divisible by tensor_model_parallel_size "
            f"({config.tensor_model_parallel_size}); pass the padded size (config.pad_vocab(n)) stored "
            f"with the model.")


class GPTModel(PipelineChunkMixin, TiedOutputLayerMixin, ShardingMapMixin, nn.Module):
    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 stage: Optional[PipelineStage] = None, parallel_output: bool = True, label_smoothing: float = 0.0):
        super().__init__()
        check_vocab_size(config, vocab_size)
        self.config = config
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length
        self.stage = stage = resolve_stage(stage)  # pre_process / post_process are read off it
        pre_process, post_process = stage.is_first, stage.is_last
        self.parallel_output = parallel_output
        self.label_smoothing = label_smoothing
        self.share_embeddings_and_output_weights = config.share_embeddings_and_output_weights

        layer_offset, num_layers_in_stage = stage.layer_range(config.num_layers)
        self.layer_offset = layer_offset

        self.embedding = LanguageEmbedding(config, vocab_size, max_sequence_length) if pre_process else None
        self.rotary = RotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.decoder = TransformerBlock(config, self_attn_mask_type="causal", layer_offset=layer_offset,
                                        num_layers_in_block=num_layers_in_stage, post_layer_norm=post_process)

        self.word_embeddings = None
        self.output_layer = None
        if post_process:
            if self.share_embeddings_and_output_weights:
                if not pre_process:
                    # The last stage's copy of the tied table: same seed, same values.
                    self.word_embeddings = build_word_embeddings_copy(config, vocab_size)
                self.output_layer = ColumnParallelLinear(
                    config.hidden_size, vocab_size, bias=False, gather_output=False,
                    skip_weight_param_allocation=True, params_dtype=config.params_dtype,
                    sequence_parallel=config.sequence_parallel)
            else:
                with component_rng(config, "output_layer"):
                    self.output_layer = ColumnParallelLinear(
                        config.hidden_size, vocab_size, bias=False, gather_output=False,
                        init_method=init_method(config), params_dtype=config.params_dtype,
                        sequence_parallel=config.sequence_parallel)
                mark_vocab_parallel(self.output_layer.weight)

    # --- accounting -------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Parameters of the whole serial model (all stages, all TP shards)."""
        return flops.parameter_count(self.config, self.vocab_size, self.max_sequence_length)

    def training_flops_per_token(self, seq_length: int) -> int:
        return flops.training_flops_per_token(self.config, self.vocab_size, seq_length)

    # --- forward ------------------------------------------------------------------------------
    def _positions(self, input_ids, position_ids):
        if position_ids is not None:
            return position_ids
        if input_ids is not None:
            return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        hidden = self.input_tensor
        if hidden is None:
            raise ValueError("pass input_ids or position_ids (or set_input_tensor on a later pipeline stage).")
        seq = hidden.shape[0] * (self.config.tensor_model_parallel_size if self.config.sequence_parallel_active else 1)
        return torch.arange(seq, device=hidden.device).expand(hidden.shape[1], seq)

    def forward(self, input_ids: Optional[torch.Tensor], position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                inference_context=None) -> torch.Tensor:
        """input_ids [b, s]; attention_mask bool (True = masked), broadcastable to [b, 1, s, s],
        combined with the causal mask (None: causal only). inference_context: the KV cache of
        incremental decoding (inference/kv_cache.py); pass the tokens' position_ids with it
        (logits: of the last position only when the context says last_logits_only).

        Returns the per-token loss [b, s] (fp32) with labels, else vocab-parallel logits
        [b, s, V/tp] (all of V with parallel_output=False); a stage without post_process
        returns its hidden states [s(/tp with sequence parallelism), b, h].
        """
        rotary = None
        if self.rotary is not None:
            rotary = self.rotary(self._positions(input_ids, position_ids))
        if self.pre_process:
            hidden = self.embedding(input_ids, position_ids)
        else:
            hidden = self.input_tensor  # the previous stage's output (set_input_tensor)
        hidden = self.decoder(hidden, attention_mask=attention_mask, rotary_angles=rotary,
                              inference_context=inference_context)
        if not self.post_process:
            return hidden
        if inference_context is not None and inference_context.last_logits_only:
            hidden = hidden[-1:]     # decoding needs the next token's logits only
        logits, _ = self.output_layer(hidden, weight=self.output_weight())  # [s, b, V/tp]
        logits = logits.transpose(0, 1).contiguous()
        if labels is None:
            return logits if self.parallel_output else gather_logits(logits)
        return vocab_parallel_cross_entropy(logits.float(), labels, self.label_smoothing)
