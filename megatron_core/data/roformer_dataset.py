"""Zhouwenwang's joint objective: each sample is either masked LM or left-to-right LM.

RoFormerModel picks the objective per token from the token types (models/roformer.py):
types all 0 give a bidirectional masked-LM sample, types 1 a causal LM sample. This
dataset wraps a BertDataset without the sentence-pair head; a RandomState seeded with
(seed, idx) makes sample idx an LM sample with probability `lm_prob`:

* MLM sample: the BERT sample as it is (masked text, labels, loss_mask), types 0;
* LM sample: the original text (the masking undone), types 1 on its real tokens and no
  MLM targets; the next-token targets come from `unified_lm_targets` when the batch is made.
"""
from __future__ import annotations

import numpy as np

from megatron_core.data.bert_dataset import BertDataset
from megatron_core.errors import DataError


class RoFormerDataset:
    """{"text", "types", "labels", "loss_mask", "padding_mask"} int64 samples; see the module docstring."""

    def __init__(self, bert_dataset: BertDataset, lm_prob: float = 0.5, seed: int = 1234):
        if bert_dataset.config.binary_head:
            raise DataError("RoFormer has no sentence-pair head; build its BertDataset with binary_head=False.")
        if not 0.0 <= lm_prob <= 1.0:
            raise DataError(f"the RoFormer LM share {lm_prob} must be in [0, 1].")
        self.bert_dataset = bert_dataset
        self.lm_prob = float(lm_prob)
        self.seed = int(seed)
        self.description = {"class": type(self).__name__, "bert": bert_dataset.description,
                            "lm_prob": self.lm_prob, "seed": self.seed}

    def __len__(self) -> int:
        return len(self.bert_dataset)

    def is_lm_sample(self, idx: int) -> bool:
        # A stream of its own (seed + 1), apart from the one that masks the BERT sample.
        return np.random.RandomState((self.seed + 1 + int(idx)) % 2**32).random_sample() < self.lm_prob

    def __getitem__(self, idx: int) -> dict:
        sample = self.bert_dataset[idx]
        types = np.zeros_like(sample["text"])
        labels, loss_mask = sample["labels"], sample["loss_mask"]
        text = sample["text"]
        if self.is_lm_sample(idx):
            text = np.where(loss_mask == 1, labels, text)
            types = sample["padding_mask"].copy()
            labels = np.full_like(labels, -1)
            loss_mask = np.zeros_like(loss_mask)
        return {"text": text, "types": types, "labels": labels, "loss_mask": loss_mask,
                "padding_mask": sample["padding_mask"]}
