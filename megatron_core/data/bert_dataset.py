"""BERT pretraining samples from a sentence-split indexed dataset.

The indexed dataset must come from ``preprocess_data --split-sentences``: each sequence
is one sentence, and ``document_indices`` groups sentences into documents.

What one sample is, following Megatron-LM's BertDataset:

1. A *sample mapping*, built once, groups consecutive sentences of a document until a
   target length is reached (the full ``max_seq_length - 3``, or with probability
   ``short_seq_prob`` a random shorter one), never leaving a single sentence behind.
2. At ``__getitem__(idx)`` a RandomState seeded with ``seed + idx`` decides everything
   else, so a sample depends only on (seed, idx), whatever the worker or rank:
   the A/B split, the next-sentence task, truncation and masking.
3. Layout: ``[CLS] A [SEP] B [SEP]`` then padding; token types 0 for A, 1 for B.

Sentence tasks (``binary_head=True``):
* NSP (default): with probability 1/2 segment B is replaced by sentences from a random
  *other* document of the same split; ``is_random`` = 1 then.
* SOP (``sentence_order_prediction=True``): with probability 1/2 A and B are swapped;
  ``is_random`` = 1 means "swapped". (Megatron-LM's BERT always does this.)

Chinese whole-word masking needs word boundaries at sample time. We run jieba on the
characters of each sentence, rebuilt from its token ids, when the sample is made
(``chinese_wwm.word_start_flags_from_ids``) instead of storing flags in a second indexed
dataset: the BERT Chinese vocabulary has one token per Han character, so the rebuilt text
equals the original up to case, spaces and [UNK] characters, which hardly move jieba's
boundaries; it keeps preprocessing and the file format unchanged, works on datasets that
already exist, and costs well under a millisecond per sentence.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron_core.data import chinese_wwm
from megatron_core.data.dataset_cache import IndexCache, content_digest, load_or_build
from megatron_core.data.gpt_dataset import default_cache_dir
from megatron_core.data.masking import (create_masked_lm_predictions, random_replacement_ids,
                                        wordpiece_word_starts)
from megatron_core.errors import DataError

# Megatron skips documents holding a sentence longer than this (usually tables or junk).
LONG_SENTENCE_LEN = 512
WHOLE_WORD_MODES = ("off", "wordpiece", "jieba")
MAPPING_FORMAT_VERSION = 1  # bump when build_sentence_sample_mapping changes its output


@dataclass
class BertDatasetConfig:
    max_seq_length: int = 512
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    binary_head: bool = True
    sentence_order_prediction: bool = False  # SOP instead of NSP when binary_head
    whole_word_masking: str = "wordpiece"  # "off", "wordpiece" ("##"), or "jieba" (Chinese)
    max_ngrams: int = 3
    seed: int = 1234
    num_samples: Optional[int] = None  # None: one pass over the documents

    def __post_init__(self):
        if self.whole_word_masking not in WHOLE_WORD_MODES:
            raise DataError(f"whole_word_masking={self.whole_word_masking!r} is unknown; "
                            f"use one of {', '.join(WHOLE_WORD_MODES)}.")
        if self.max_seq_length < 5:
            raise DataError(f"max_seq_length={self.max_seq_length} leaves no room for "
                            f"[CLS] A [SEP] B [SEP]; use at least 5.")


# ----------------------------------------------------------------------------- mapping

def build_sentence_sample_mapping(sentence_lengths: np.ndarray, document_indices: np.ndarray,
                                  documents: Sequence[int], max_num_tokens: int,
                                  short_seq_prob: float, min_sentences: int, seed: int,
                                  num_samples: Optional[int]) -> np.ndarray:
    """Rows (first_sentence, end_sentence, target_length, document) of every sample.

    Sentences of a document are grouped until the group reaches its target length, as
    long as at least two sentences remain for the next group (so no group is ever a lone
    leftover). Epochs repeat until `num_samples` rows exist; each epoch is shuffled on its
    own and the rows are cut to `num_samples`.
    """
    length_rng = np.random.RandomState(seed % 2**32)
    shuffle_rng = np.random.RandomState((seed + 1) % 2**32)

    def target_length() -> int:
        if short_seq_prob > 0 and length_rng.random_sample() < short_seq_prob:
            return int(length_rng.randint(2, max_num_tokens + 1))
        return max_num_tokens

    usable = []
    for doc in documents:
        first, last = int(document_indices[doc]), int(document_indices[doc + 1])
        if last - first < min_sentences:
            continue
        if (sentence_lengths[first:last] > LONG_SENTENCE_LEN).any():
            continue
        usable.append((int(doc), first, last))
    if not usable:
        return np.zeros((0, 4), dtype=np.int64)

    epochs: List[np.ndarray] = []
    total = 0
    while True:
        rows = []
        for doc, first, last in usable:
            start, seq_len, target = first, 0, target_length()
            for sent in range(first, last):
                seq_len += int(sentence_lengths[sent])
                remaining = last - sent - 1
                enough = seq_len >= target and remaining > 1 and sent + 1 - start >= min_sentences
                if enough or remaining == 0:
                    rows.append((start, sent + 1, target, doc))
                    start, seq_len, target = sent + 1, 0, target_length()
        epoch = np.array(rows, dtype=np.int64).reshape(-1, 4)
        shuffle_rng.shuffle(epoch)
        epochs.append(epoch)
        total += len(epoch)
        if num_samples is None or total >= num_samples:
            break
    mapping = np.concatenate(epochs)
    return mapping if num_samples is None else mapping[:num_samples]


def sentence_sample_mapping(indexed_dataset, document_range: Optional[Tuple[int, int]],
                            max_num_tokens: int, short_seq_prob: float, min_sentences: int,
                            seed: int, num_samples: Optional[int], cache_dir: Optional[str],
                            class_name: str, split_name: str) -> np.ndarray:
    """The mapping of a split, from the on-disk index cache when an identical one exists.

    `document_range` is (first, stop) in documents; None means every document. The cache
    defaults to <data dir>/index-cache, like the GPT dataset's.
    """
    doc_index = np.asarray(indexed_dataset.document_indices)
    num_docs = len(doc_index) - 1
    start, stop = (0, num_docs) if document_range is None else (int(x) for x in document_range)
    prefix = getattr(indexed_dataset, "path_prefix", None)
    if not 0 <= start < stop <= num_docs:
        raise DataError(f"the {split_name} split of {prefix or 'the dataset'} would hold documents "
                        f"[{start}, {stop}) but the dataset has {num_docs}; give it a larger "
                        f"share in --split or use more data.")
    build = lambda: {"samples_mapping": build_sentence_sample_mapping(  # noqa: E731
        np.asarray(indexed_dataset.sequence_lengths), doc_index, range(start, stop),
        max_num_tokens, short_seq_prob, min_sentences, seed, num_samples)}
    if prefix is None:  # an in-memory dataset: nothing to key a cache on
        return build()["samples_mapping"]
    prefix = os.path.abspath(prefix)
    description = {
        "class": class_name, "format_version": MAPPING_FORMAT_VERSION, "path_prefix": prefix,
        "split": split_name, "document_range": [start, stop],
        "num_sequences": len(indexed_dataset), "max_num_tokens": max_num_tokens,
        # the sentence lengths and document boundaries the mapping is built from
        "content_md5": content_digest(
            indexed_dataset.sequence_lengths[doc_index[start]:doc_index[stop]],
            doc_index[start:stop + 1] - doc_index[start]),
        "short_seq_prob": short_seq_prob, "min_sentences": min_sentences, "seed": seed,
        "num_samples": num_samples, "long_sentence_len": LONG_SENTENCE_LEN,
    }
    cache = IndexCache(cache_dir or default_cache_dir(prefix), description, ("samples_mapping",))
    arrays, _ = load_or_build(cache, build)
    return arrays["samples_mapping"]


def sample_dataset_description(class_name: str, indexed_dataset, document_range, split_name: str,
                               config, **extra) -> dict:
    """What a sentence-sample dataset is made of, for the cache key of a blend over it."""
    prefix = getattr(indexed_dataset, "path_prefix", None)
    return {"class": class_name, "path_prefix": os.path.abspath(prefix) if prefix else None,
            "split": split_name, "num_sequences": len(indexed_dataset),
            "document_range": None if document_range is None else [int(x) for x in document_range],
            "config": dataclasses.asdict(config), **extra}


# ----------------------------------------------------------------------------- sample

Segment = Tuple[List[int], List[bool]]  # tokens and their word-start flags


def _concat(parts: Sequence[Segment]) -> Segment:
    tokens, flags = [], []
    for t, f in parts:
        tokens.extend(t)
        flags.extend(f)
    return tokens, flags


def truncate_segments(a: Segment, b: Segment, max_num_tokens: int,
                      rng: np.random.RandomState) -> bool:
    """Trim the longer segment, one token at a time from a random end, until A + B fits.
    Returns whether anything was cut (Megatron's ``truncated``)."""
    if len(a[0]) + len(b[0]) <= max_num_tokens:
        return False
    while len(a[0]) + len(b[0]) > max_num_tokens:
        tokens, flags = a if len(a[0]) > len(b[0]) else b
        if rng.random_sample() < 0.5:
            del tokens[0], flags[0]
        else:
            tokens.pop()
            flags.pop()
    return True


class BertDataset(torch.utils.data.Dataset):
    """Map-style BERT pretraining dataset; see the module docstring.

    `document_range`: (first, stop) documents of this split (default: all documents).
    `cache_dir`: where the sample mapping is cached (default <data dir>/index-cache).
    """

    def __init__(self, indexed_dataset, tokenizer, config: BertDatasetConfig,
                 document_range: Optional[Tuple[int, int]] = None,
                 cache_dir: Optional[str] = None, split_name: str = "train"):
        self.indexed_dataset = indexed_dataset
        self.config = config
        self.description = sample_dataset_description(type(self).__name__, indexed_dataset, document_range,
                                                      split_name, config)
        self.cls_id, self.sep_id = int(tokenizer.cls), int(tokenizer.sep)
        self.mask_id, self.pad_id = int(tokenizer.mask), int(tokenizer.pad)
        self.inv_vocab = tokenizer.inv_vocab
        self.random_token_ids = random_replacement_ids(self.inv_vocab)
        self.never_mask = {self.cls_id, self.sep_id, self.pad_id, self.mask_id}

        self.max_num_tokens = config.max_seq_length - 3  # [CLS], [SEP], [SEP]
        min_sentences = 2 if config.binary_head else 1
        self.samples_mapping = sentence_sample_mapping(
            indexed_dataset, document_range, self.max_num_tokens, config.short_seq_prob,
            min_sentences, config.seed, config.num_samples, cache_dir, "BertDataset", split_name)
        name = getattr(indexed_dataset, "path_prefix", "the dataset")
        if len(self.samples_mapping) == 0:
            raise DataError(
                f"the {split_name} split of {name} has no document with {min_sentences} or more "
                f"sentences (of at most {LONG_SENTENCE_LEN} tokens); preprocess it with "
                f"--split-sentences"
                + (", or train without the sentence-pair head." if config.binary_head else "."))
        # NSP draws segment B from other non-empty documents of the same split
        self._doc_index = np.asarray(indexed_dataset.document_indices)
        first, stop = (0, len(self._doc_index) - 1) if document_range is None else document_range
        docs = np.arange(int(first), int(stop))
        self._nsp_documents = docs[self._doc_index[docs + 1] > self._doc_index[docs]]
        if config.binary_head and not config.sentence_order_prediction \
                and len(self._nsp_documents) < 2:
            raise DataError(f"next-sentence prediction needs at least two documents in the "
                            f"{split_name} split of {name}; add documents or set "
                            f"sentence_order_prediction=True.")

    def __len__(self) -> int:
        return len(self.samples_mapping)

    def _segment(self, sentence: int) -> Segment:
        tokens = self.indexed_dataset[int(sentence)].tolist()
        mode = self.config.whole_word_masking
        if mode == "jieba":
            flags = chinese_wwm.word_start_flags_from_ids(tokens, self.inv_vocab)
        elif mode == "wordpiece":
            flags = wordpiece_word_starts(tokens, self.inv_vocab)
        else:
            flags = [True] * len(tokens)
        return tokens, flags

    def _random_next(self, own_doc: int, target_b: int, rng: np.random.RandomState) -> Segment:
        """Sentences from a random other document, from a random start, until
        `target_b` tokens are collected or the document ends (as in Google's BERT)."""
        choices = self._nsp_documents
        doc = own_doc
        while doc == own_doc:
            doc = int(choices[rng.randint(0, len(choices))])
        first, last = int(self._doc_index[doc]), int(self._doc_index[doc + 1])
        parts, length = [], 0
        for sent in range(int(rng.randint(first, last)), last):
            parts.append(self._segment(sent))
            length += len(parts[-1][0])
            if length >= target_b:
                break
        return _concat(parts)

    def __getitem__(self, idx: int) -> dict:
        start, end, target, doc = (int(v) for v in self.samples_mapping[idx])
        rng = np.random.RandomState((self.config.seed + int(idx)) % 2**32)
        sentences = [self._segment(s) for s in range(start, end)]
        is_random = False
        if self.config.binary_head:
            a_end = int(rng.randint(1, len(sentences))) if len(sentences) >= 3 else 1
            a, b = _concat(sentences[:a_end]), _concat(sentences[a_end:])
            if rng.random_sample() < 0.5:
                is_random = True
                if self.config.sentence_order_prediction:
                    a, b = b, a
                else:
                    b = self._random_next(doc, max(1, target - len(a[0])), rng)
        else:
            a, b = _concat(sentences), ([], [])
        truncated = truncate_segments(a, b, target, rng)
        return self._finish(a, b, target, is_random, truncated, rng)

    def _finish(self, a: Segment, b: Segment, target: int, is_random: bool,
                truncated: bool, rng: np.random.RandomState) -> dict:
        tokens = [self.cls_id] + a[0] + [self.sep_id]
        flags = [True] + a[1] + [True]
        types = [0] * len(tokens)
        if b[0]:
            tokens += b[0] + [self.sep_id]
            flags += b[1] + [True]
            types += [1] * (len(b[0]) + 1)
        cfg = self.config
        masked = create_masked_lm_predictions(
            tokens, masked_lm_prob=cfg.masked_lm_prob,
            max_predictions_per_seq=max(1, int(cfg.masked_lm_prob * target)),
            mask_id=self.mask_id, random_token_ids=self.random_token_ids,
            never_mask=self.never_mask, np_rng=rng, word_starts=flags,
            whole_word=cfg.whole_word_masking != "off", max_ngrams=cfg.max_ngrams)

        n, pad = len(tokens), cfg.max_seq_length - len(tokens)
        text = np.array(masked.tokens + [self.pad_id] * pad, dtype=np.int64)
        labels = np.full(cfg.max_seq_length, -1, dtype=np.int64)
        loss_mask = np.zeros(cfg.max_seq_length, dtype=np.int64)
        labels[masked.positions] = masked.labels
        loss_mask[masked.positions] = 1
        return {
            "text": text,
            "types": np.array(types + [0] * pad, dtype=np.int64),
            "labels": labels,
            "is_random": int(is_random),
            "loss_mask": loss_mask,
            "padding_mask": np.array([1] * n + [0] * pad, dtype=np.int64),
            "truncated": int(truncated),
        }
