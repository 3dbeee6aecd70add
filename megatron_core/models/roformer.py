"""RoFormer: a BERT-style encoder with rotary positions, trained as MLM and LM at once.

Positions enter only through rotary embeddings on q and k (no absolute position table).
The pair layout is the interleaved one: channels (2j, 2j+1) of each head rotate by
angle p * 10000^(-2j/d). HF's RoFormerSelfAttention.apply_rotary_position_embeddings and
IDEA's Zhouwenwang (Fengshenbang-LM fengshen/models/roformer, RoPEmbedding) both rotate
adjacent pairs, so configs here need rotary_interleaved=True (checked).

One model serves both objectives, chosen by token type, following Zhouwenwang's
`roformer_extended_attention_mask` (itself bert4keras' UniLM mask): with c = cumsum of the
token types along the sequence, query i may not see key j when c[j] > c[i]. Hence
  * a sample whose token types are all 0 is bidirectional: masked LM;
  * a sample whose token types are all 1 is causal: left-to-right LM;
  * a 0-prefix followed by 1s is a prefix LM (the prefix sees itself, the rest is causal).
Padding keys are masked on top. `unified_lm_targets` builds the matching labels: a
position predicts the next token when that token has type 1 (bert4keras' seq2seq
convention), otherwise its MLM label where the MLM loss mask is set.

Layouts (config.layernorm_position), as for BERT:
  "post"  HF RoFormer (junnyu/roformer_chinese_*): LayerNorm after the embedding sum,
          post-LN layers, no final norm;
  "pre"   Zhouwenwang: MegatronBERT layout, no embedding norm, pre-LN layers, final norm.
Neither Zhouwenwang nor HF's RoFormerForMaskedLM has a pooler or NSP head.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..mpu.layout import PipelineStage
from ..transformer.config import ConfigError, TransformerConfig
from .bert import BertModel, bert_parameter_count, bert_training_flops_per_token


def unified_attention_mask(padding_mask: torch.Tensor, tokentype_ids: torch.Tensor) -> torch.Tensor:
    """[b, s] padding (1 = token) and token types -> bool [b, 1, s, s], True = may not attend."""
    if tokentype_ids is None or tokentype_ids.shape != padding_mask.shape:
        raise ValueError("RoFormer selects LM (token type 1) or MLM (token type 0) per token; pass tokentype_ids "
                         "with the padding mask's shape [batch, seq].")
    levels = torch.cumsum(tokentype_ids.long(), dim=1)
    hidden_future = levels[:, None, :] > levels[:, :, None]  # [b, query, key]
    pad_keys = (padding_mask < 0.5)[:, None, :]
    return (hidden_future | pad_keys).unsqueeze(1)


def unified_lm_targets(input_ids: torch.Tensor, tokentype_ids: torch.Tensor, padding_mask: torch.Tensor,
                       mlm_labels: Optional[torch.Tensor] = None, mlm_loss_mask: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Labels and loss mask [b, s] for a batch mixing MLM and LM samples.

    Position i predicts input_ids[i + 1] when token i + 1 is a real token of type 1;
    elsewhere it predicts mlm_labels[i] where mlm_loss_mask[i] is 1.
    """
    labels = torch.zeros_like(input_ids)
    loss_mask = torch.zeros_like(input_ids)
    if mlm_labels is not None:
        if mlm_loss_mask is None:
            raise ValueError("pass mlm_loss_mask together with mlm_labels (1 where a token was masked).")
        keep = mlm_loss_mask > 0
        labels = torch.where(keep, mlm_labels, labels)
        loss_mask = keep.long()
    next_is_lm = torch.zeros_like(input_ids, dtype=torch.bool)
    next_is_lm[:, :-1] = (tokentype_ids[:, 1:] == 1) & (padding_mask[:, 1:] > 0)
    next_ids = torch.zeros_like(input_ids)
    next_ids[:, :-1] = input_ids[:, 1:]
    labels = torch.where(next_is_lm, next_ids, labels)
    loss_mask = torch.where(next_is_lm, torch.ones_like(loss_mask), loss_mask)
    return labels, loss_mask


class RoFormerModel(BertModel):
    """BertModel with rotary positions and the token-type-selected LM/MLM mask.

    forward(input_ids, padding_mask, tokentype_ids, lm_labels) -> (per-token loss [b, s] or
    vocab-parallel logits, None); the second element is the binary head's output, None
    unless add_binary_head=True.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int = 512,
                 num_tokentypes: int = 2, add_binary_head: bool = False, add_pooler: Optional[bool] = None,
                 stage: Optional[PipelineStage] = None):
        if config.position_embedding_type != "rope":
            raise ConfigError(f"RoFormer uses rotary positions; set position_embedding_type='rope' "
                              f"(got {config.position_embedding_type!r}).")
        if not config.rotary_interleaved:
            raise ConfigError("RoFormer rotates adjacent channel pairs (HF and Zhouwenwang); set rotary_interleaved=True.")
        if num_tokentypes < 2:
            raise ConfigError(f"RoFormer needs token types 0 (MLM) and 1 (LM); num_tokentypes must be >= 2, "
                              f"got {num_tokentypes}.")
        super().__init__(config, vocab_size, max_sequence_length, num_tokentypes, add_binary_head, add_pooler, stage)

    def attention_mask(self, padding_mask: torch.Tensor, tokentype_ids: Optional[torch.Tensor]) -> torch.Tensor:
        return unified_attention_mask(padding_mask, tokentype_ids)

    def forward(self, input_ids: Optional[torch.Tensor], padding_mask: torch.Tensor,
                tokentype_ids: Optional[torch.Tensor] = None, lm_labels: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None):
        if tokentype_ids is None:
            raise ValueError("RoFormer selects LM (token type 1) or MLM (token type 0) per token; pass tokentype_ids.")
        if position_ids is not None:
            raise ValueError("RoFormer has no position table; its rotary positions are always 0..seq-1.")
        return super().forward(input_ids, padding_mask, tokentype_ids, lm_labels)

    def parameter_count(self) -> int:
        return roformer_parameter_count(self.config, self.vocab_size, self.num_tokentypes,
                                        add_pooler=self.add_pooler, add_binary_head=self.add_binary_head)


def roformer_parameter_count(config: TransformerConfig, vocab_size: int, num_tokentypes: int = 2,
                             add_pooler: bool = False, add_binary_head: bool = False) -> int:
    return bert_parameter_count(config, vocab_size, 0, num_tokentypes, add_pooler, add_binary_head)


def roformer_training_flops_per_token(config: TransformerConfig, vocab_size: int, seq_length: int) -> int:
    """Same matrix multiplies as BERT (rotary is elementwise and not counted)."""
    return bert_training_flops_per_token(config, vocab_size, seq_length)
