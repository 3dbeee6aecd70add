"""The model families' data flags (Megatron-LM's names where it has them) and their dataclass.

    parser = add_data_options_arguments(parser)     # an entry point's extra_args_provider
    options = data_options_from_args(args)          # DataOptions, read by the providers and get_batch_*

`DataConfig` (training/config.py) holds what every family shares (data path, split,
cache, tokenizer); these are the per-family choices: how GPT masks and positions reset at
end-of-document, BERT's masking and sentence-pair task, T5's lengths and finetuning fields, RoFormer's LM share.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from .config import build

DATALOADER_TYPES = ("single", "cyclic")


@dataclass
class DataOptions:
    # GPT (Megatron's get_ltor_masks_and_position_ids)
    reset_position_ids: bool = False        # positions restart after each end-of-document token
    reset_attention_mask: bool = False      # tokens attend only within their own document
    eod_mask_loss: bool = False             # no loss on predicting the end-of-document token
    # BERT / RoFormer
    mask_prob: float = 0.15
    short_seq_prob: float = 0.1
    bert_binary_head: bool = True           # NSP / SOP head (Megatron's --bert-no-binary-head turns it off)
    sentence_order_prediction: bool = False  # SOP instead of NSP (ours: --sop)
    wwm: bool = False                       # Chinese whole-word masking (jieba words)
    roformer_lm_prob: float = 0.5           # share of RoFormer samples that are left-to-right LM
    # T5
    encoder_seq_length: Optional[int] = None   # None: --seq-length
    decoder_seq_length: int = 128
    source_key: str = "source"              # T5 finetuning's JSON fields (finetune_t5.py)
    target_key: str = "target"
    # how the training samples are ordered: "single" (Megatron's sequential sampler) or "cyclic"
    dataloader_type: str = "single"

    def __post_init__(self):
        for name in ("mask_prob", "short_seq_prob", "roformer_lm_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}.")
        if self.dataloader_type not in DATALOADER_TYPES:
            raise ConfigError(f"--dataloader-type {self.dataloader_type} is unknown; use single or cyclic.")
        if self.decoder_seq_length < 1:
            raise ConfigError(f"--decoder-seq-length must be a positive integer, got {self.decoder_seq_length}.")


def add_data_options_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("data: model families")
    g.add_argument("--reset-position-ids", action="store_true")
    g.add_argument("--reset-attention-mask", action="store_true")
    g.add_argument("--eod-mask-loss", action="store_true")
    g.add_argument("--mask-prob", type=float, default=0.15)
    g.add_argument("--short-seq-prob", type=float, default=0.1)
    g.add_argument("--bert-no-binary-head", action="store_false", dest="bert_binary_head")
    g.add_argument("--sop", action="store_true", dest="sentence_order_prediction",
                   help="(ours) sentence-order prediction instead of next-sentence prediction.")
    g.add_argument("--wwm", action="store_true", help="Chinese whole-word masking (jieba word boundaries).")
    g.add_argument("--roformer-lm-prob", type=float, default=0.5,
                   help="(ours) share of RoFormer samples trained as left-to-right LM (the rest masked LM).")
    g.add_argument("--encoder-seq-length", type=int, default=None)
    g.add_argument("--decoder-seq-length", type=int, default=128)
    g.add_argument("--dataloader-type", default="single", choices=list(DATALOADER_TYPES))
    return parser


def add_seq2seq_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """(ours) The fields of finetune_t5.py's JSON lines."""
    g = parser.add_argument_group("data: source/target JSON lines")
    g.add_argument("--source-key", default="source", help="the field holding the encoder's text")
    g.add_argument("--target-key", default="target", help="the field holding the text the decoder learns")
    return parser


def data_options_from_args(args) -> DataOptions:
    return build(DataOptions, args)
