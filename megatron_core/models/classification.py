"""Megatron's downstream heads on a bidirectional encoder (BERT, MegatronBERT, RoFormer).

    classification    logits [b, num_classes] = linear(dropout(pooler(h)))        (tasks/glue, CLUE)
    multiple choice   logits [b, choices]     = linear(dropout(pooler(h))) -> 1 per choice (RACE, C3, CHID)

The encoder is the pretraining one (embedding, layers, pooler: the same keys, so a pretraining
checkpoint loads into it) without the masked-LM and binary heads; `classification_head` is
the new replicated linear layer (HF's `classifier`). Attention is bidirectional over the real
tokens whatever the family: RoFormer's unified LM mask is for generation, not classification.

    model = ClassificationModel(config, vocab_size, max_sequence_length=512, num_classes=3)
    logits = model(tokens, padding_mask, tokentype_ids)          # [b, 3]
    choice_model = ClassificationModel(config, vocab_size, num_classes=1, multiple_choice=True)
    logits = choice_model(tokens, padding_mask, types)           # tokens [b, choices, s] -> [b, choices]

Pipeline stages as BertModel's; the last stage returns the logits.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..mpu.layout import PipelineStage
from ..transformer.config import ConfigError, TransformerConfig
from ..transformer.dropout import dropout
from ..transformer.init import component_rng
from .bert import BertModel, bert_parameter_count
from .heads import _linear, gather_sequence_for_heads


class ClassificationModel(BertModel):
    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int = 512,
                 num_tokentypes: int = 2, num_classes: int = 2, multiple_choice: bool = False,
                 labels: Optional[Sequence[str]] = None, stage: Optional[PipelineStage] = None):
        if multiple_choice and num_classes != 1:
            raise ConfigError(f"a multiple-choice head scores each choice with one logit; num_classes is 1, "
                              f"not {num_classes}.")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be 1 or more, got {num_classes}.")
        super().__init__(config, vocab_size, max_sequence_length, num_tokentypes, add_binary_head=False,
                         add_pooler=True, stage=stage, add_lm_head=False)
        if labels is not None and not multiple_choice and len(labels) != num_classes:
            raise ConfigError(f"{len(labels)} class labels ({', '.join(map(str, labels))}) for {num_classes} classes.")
        self.num_classes = num_classes
        self.multiple_choice = multiple_choice
        self.labels = None if labels is None else tuple(str(label) for label in labels)  # the names, for exports
        if self.post_process:
            with component_rng(config, "classification_head"):
                self.classification_head = _linear(config, config.hidden_size, num_classes)

    def forward(self, input_ids: Optional[torch.Tensor], padding_mask: torch.Tensor,
                tokentype_ids: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None):
        choices = None
        if self.multiple_choice:        # [b, choices, s] -> [b * choices, s]
            batch, choices, seq = padding_mask.shape
            padding_mask = padding_mask.reshape(batch * choices, seq)
            input_ids = None if input_ids is None else input_ids.reshape(batch * choices, seq)
            tokentype_ids = None if tokentype_ids is None else tokentype_ids.reshape(batch * choices, seq)
        hidden = self.encode(input_ids, padding_mask, tokentype_ids, position_ids)
        if not self.post_process:
            return hidden
        pooled = self.pooler(gather_sequence_for_heads(hidden, self.config))
        logits = self.classification_head(dropout(pooled, self.config.hidden_dropout, self.training, self.config))
        return logits.view(-1, choices) if choices is not None else logits

    def parameter_count(self) -> int:
        """Parameters of the whole serial model (all stages, TP=1), from the config."""
        return classification_parameter_count(self.config, self.vocab_size, self.max_sequence_length,
                                              self.num_tokentypes, self.num_classes)


def classification_parameter_count(config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                                   num_tokentypes: int, num_classes: int) -> int:
    """The pretraining BERT with a pooler and no binary head, less its masked-LM head (dense, norm,
    output bias, an untied output table), plus the classification head."""
    h = config.hidden_size
    norm = (2 if config.normalization == "LayerNorm" else 1) * h
    count = bert_parameter_count(config, vocab_size, max_sequence_length, num_tokentypes, add_pooler=True,
                                 add_binary_head=False)
    count -= h * h + h + norm + vocab_size
    if not config.share_embeddings_and_output_weights:
        count -= vocab_size * h
    return count + h * num_classes + num_classes
