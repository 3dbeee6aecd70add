"""BERT: bidirectional encoder with a masked-LM head and a binary (NSP / SOP) head.

Two layouts, chosen by `config.layernorm_position`:

  "post"  original Google / HF BertModel: LayerNorm right after the embedding sum,
          post-LN layers  x = LN(x + f(x)),  no final norm;
  "pre"   MegatronBERT (Erlangshen-MegatronBert-1.3B, HF MegatronBertModel): no norm
          after the embeddings, pre-LN layers  x = x + f(LN(x)),  a final LayerNorm.

    model = BertModel(config, vocab_size=config.pad_vocab(21128), max_sequence_length=512)
    lm_loss, binary_logits = model(tokens, padding_mask, tokentype_ids=types, lm_labels=labels)
    loss = bert_pretraining_loss(lm_loss, binary_logits, loss_mask, sentence_order)

Inputs are Megatron's: `padding_mask` [b, s] is 1 on real tokens and 0 on padding (the
BERT dataset's "padding_mask"); `lm_labels` [b, s] holds the original ids at masked
positions (any value elsewhere: the loss mask decides what counts). forward returns
(per-token MLM loss [b, s] fp32, or vocab-parallel logits [b, s, vocab/tp] without labels;
binary logits [b, 2] or None), as Megatron's BertModel does.

Pipeline stages: the model builds the chunk `stage` (mpu.PipelineStage, by default the
whole model) and the layers stage.layer_range gives it; the first chunk (pre_process)
builds the embedding, the last (post_process) the pooler and heads. A last stage without
the embedding builds a copy of the word table for the tied output layer, a stage copy the
first stage owns (pipeline/chunk.py).
Intermediate stages return the hidden states [s, b, h]; a stage that is not first takes
its input from set_input_tensor.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..mpu.cross_entropy import vocab_parallel_cross_entropy
from ..mpu.layout import PipelineStage
from ..transformer.block import TransformerBlock
from ..transformer.config import ConfigError, TransformerConfig
from ..transformer.rotary import RotaryEmbedding
from . import flops
from ..pipeline.chunk import PipelineChunkMixin
from .language_model import ShardingMapMixin, masked_mean, resolve_stage
from .embedding import LanguageEmbedding, build_word_embeddings_copy
from .heads import MaskedLMHead, Pooler, build_binary_head, gather_sequence_for_heads


def padding_attention_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """[b, s] (1 = token, 0 = pad) -> bool [b, 1, 1, s], True where a key is padding.

    Only keys are masked (HF's convention): rows of padding queries still attend to the
    real tokens, so every position has finite, HF-identical hidden states.
    """
    if padding_mask.dim() != 2:
        raise ValueError(f"padding_mask must be [batch, seq] with 1 for tokens and 0 for padding, "
                         f"got shape {tuple(padding_mask.shape)}.")
    return (padding_mask < 0.5)[:, None, None, :]


class BertModel(PipelineChunkMixin, ShardingMapMixin, nn.Module):
    # Megatron's BERT: the padding mask is bidirectional, never causal.
    self_attn_mask_type = "padding"

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int = 512,
                 num_tokentypes: int = 2, add_binary_head: bool = True, add_pooler: Optional[bool] = None,
                 stage: Optional[PipelineStage] = None, add_lm_head: bool = True):
        super().__init__()
        if config.apply_residual_connection_post_layernorm:
            raise ConfigError("BertModel does not support apply_residual_connection_post_layernorm; "
                              "both BERT layouts take the residual before the norm.")
        self.config = config
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length
        self.num_tokentypes = num_tokentypes
        self.stage = stage = resolve_stage(stage)  # pre_process / post_process are read off it
        pre_process, post_process = stage.is_first, stage.is_last
        self.add_binary_head = add_binary_head
        self.add_pooler = add_binary_head if add_pooler is None else add_pooler
        if add_binary_head and not self.add_pooler:
            raise ConfigError("the binary (NSP/SOP) head reads the pooled output; keep add_pooler=True.")
        self.post_ln = config.layernorm_position == "post"

        self.share_embeddings_and_output_weights = config.share_embeddings_and_output_weights
        layer_offset, num_layers_in_stage = stage.layer_range(config.num_layers)
        self.layer_offset = layer_offset
        if pre_process:
            self.embedding = LanguageEmbedding(config, vocab_size, max_sequence_length, num_tokentypes,
                                               layernorm=self.post_ln)
        self.rotary = RotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.encoder = TransformerBlock(config, self_attn_mask_type=self.self_attn_mask_type,
                                        layer_offset=layer_offset, num_layers_in_block=num_layers_in_stage,
                                        post_layer_norm=post_process)
        if post_process:
            self.pooler = Pooler(config) if self.add_pooler else None
            self.lm_head = MaskedLMHead(config, vocab_size) if add_lm_head else None
            self.binary_head = build_binary_head(config) if add_binary_head else None
            if add_lm_head and config.share_embeddings_and_output_weights and not pre_process:
                self.word_embeddings = build_word_embeddings_copy(config, vocab_size)

    # --- forward -------------------------------------------------------------------------
    def attention_mask(self, padding_mask: torch.Tensor, tokentype_ids: Optional[torch.Tensor]) -> torch.Tensor:
        return padding_attention_mask(padding_mask)

    def _rotary_angles(self, batch: int, seq: int, device) -> Optional[torch.Tensor]:
        if self.rotary is None:
            return None
        positions = torch.arange(seq, device=device).unsqueeze(0).expand(batch, seq)
        return self.rotary(positions)

    def encode(self, input_ids: Optional[torch.Tensor], padding_mask: torch.Tensor,
               tokentype_ids: Optional[torch.Tensor] = None,
               position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embedding (first stage) and this stage's layers: -> [s(/tp with SP), b, h]."""
        batch, seq = padding_mask.shape
        if seq > self.max_sequence_length and self.config.position_embedding_type == "learned_absolute":
            raise ValueError(f"sequence length {seq} exceeds max_sequence_length {self.max_sequence_length}.")
        hidden = self.input_tensor  # the previous stage's output on a later pipeline stage
        if self.pre_process:
            if input_ids is None or tuple(input_ids.shape) != (batch, seq):
                raise ValueError(f"input_ids must be [batch, seq] = {(batch, seq)} like padding_mask, "
                                 f"got {None if input_ids is None else tuple(input_ids.shape)}.")
            if position_ids is None and self.embedding.position_embeddings is not None:
                position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, seq)
            if self.num_tokentypes > 0 and tokentype_ids is None:
                tokentype_ids = torch.zeros_like(input_ids)
            hidden = self.embedding(input_ids, position_ids, tokentype_ids if self.num_tokentypes > 0 else None)
        mask = self.attention_mask(padding_mask, tokentype_ids)
        return self.encoder(hidden, mask, self._rotary_angles(batch, seq, padding_mask.device))

    def forward(self, input_ids: Optional[torch.Tensor], padding_mask: torch.Tensor,
                tokentype_ids: Optional[torch.Tensor] = None, lm_labels: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None):
        hidden = self.encode(input_ids, padding_mask, tokentype_ids, position_ids)
        if not self.post_process:
            return hidden
        return self.heads(hidden, lm_labels)

    def heads(self, hidden: torch.Tensor, lm_labels: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Encoder output [s(/tp), b, h] -> (MLM loss [b, s] or logits [b, s, v/tp], binary logits)."""
        hidden = gather_sequence_for_heads(hidden, self.config)
        binary_logits = None
        if self.pooler is not None:
            pooled = self.pooler(hidden)
            if self.binary_head is not None:
                binary_logits = self.binary_head(pooled)
        logits = self.lm_head(hidden, self.word_embeddings_weight())
        if lm_labels is None:
            return logits, binary_logits
        if tuple(lm_labels.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"lm_labels must be [batch, seq] = {tuple(logits.shape[:2])}, got {tuple(lm_labels.shape)}.")
        return vocab_parallel_cross_entropy(logits, lm_labels), binary_logits

    def pooled_output(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.pooler(gather_sequence_for_heads(hidden, self.config))

    # --- accounting ------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Parameters of the whole serial model (all stages, TP=1), from the config."""
        return bert_parameter_count(self.config, self.vocab_size, self.max_sequence_length, self.num_tokentypes,
                                    add_pooler=self.add_pooler, add_binary_head=self.add_binary_head)

    def training_flops_per_token(self, seq_length: int) -> int:
        return bert_training_flops_per_token(self.config, self.vocab_size, seq_length)


def bert_pretraining_losses(lm_loss: torch.Tensor, binary_logits: Optional[torch.Tensor], loss_mask: torch.Tensor,
                            sentence_order: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The terms of Megatron's pretrain_bert loss under the names it logs: "lm loss" (masked-token
    mean of the MLM loss) and, with a binary head, "sop loss" (its NSP or SOP cross entropy;
    sentence_order [b]: 1 = random / swapped, -1 ignored)."""
    losses = {"lm loss": masked_mean(lm_loss.float(), loss_mask)}
    if binary_logits is not None:
        if sentence_order is None:
            raise ValueError("this BERT has a binary head; pass sentence_order (the dataset's is_random).")
        losses["sop loss"] = F.cross_entropy(binary_logits.float(), sentence_order.view(-1).long(), ignore_index=-1)
    return losses


def bert_pretraining_loss(lm_loss: torch.Tensor, binary_logits: Optional[torch.Tensor], loss_mask: torch.Tensor,
                          sentence_order: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Megatron's pretrain_bert loss: the MLM term + the NSP/SOP term (bert_pretraining_losses)."""
    return sum(bert_pretraining_losses(lm_loss, binary_logits, loss_mask, sentence_order).values())


def bert_parameter_count(config: TransformerConfig, vocab_size: int, max_sequence_length: int = 512,
                         num_tokentypes: int = 2, add_pooler: bool = True, add_binary_head: bool = True) -> int:
    """Serial parameter count of BertModel (and of RoFormer, which is one without pooler/NSP)."""
    h = config.hidden_size
    norm = (2 if config.normalization == "LayerNorm" else 1) * h
    count = vocab_size * h + num_tokentypes * h
    if config.position_embedding_type == "learned_absolute":
        count += max_sequence_length * h
    if config.layernorm_position == "post":
        count += norm  # LayerNorm on the embedding sum
    count += config.num_layers * flops.layer_parameter_count(config)
    if config.final_layernorm:
        count += norm
    count += h * h + h + norm + vocab_size  # MLM head: dense, norm, output bias
    if not config.share_embeddings_and_output_weights:
        count += vocab_size * h
    if add_pooler:
        count += h * h + h
    if add_binary_head:
        count += 2 * h + 2
    return count


def bert_training_flops_per_token(config: TransformerConfig, vocab_size: int, seq_length: int) -> int:
    """Megatron's formula (flops.py) plus the MLM head's dense layer; logits for every token,
    as Megatron's BERT computes them. The pooler and binary head (once per sequence) are
    negligible and not counted."""
    forward = flops.forward_flops_per_token(config, vocab_size, seq_length) + 2 * config.hidden_size ** 2
    return 3 * forward
