"""T5 span-corruption samples from a sentence-split indexed dataset.

Sentences are grouped with the same sample mapping as BERT (``bert_dataset``, without
the sentence-pair constraint), concatenated and cut to ``max_seq_length``. Then, as in
T5, ``noise_density`` (0.15) of the tokens are corrupted in spans of mean length
``mean_span_length`` (3): the number of spans is fixed by those two numbers and the
span and gap lengths are a random partition, so the density is exact per sample. Each
span is replaced in the encoder input by one sentinel; the decoder predicts
``sentinel span sentinel span ... EOS``. Keys and masks follow Megatron-LM's T5Dataset:

* ``text_enc``: encoder input with sentinels, padded;
* ``text_dec``: decoder input, ``BOS`` + the target shifted right, padded;
* ``labels``: ``s0 span0 s1 span1 ... EOS``, -1 on padding; ``loss_mask`` 1 on targets;
* ``enc_mask`` [enc, enc], ``dec_mask`` [dec, dec] (causal), ``enc_dec_mask`` [dec, enc]:
  int64, 1 where attention is allowed (both positions are real tokens).

Sentinels: ``<extra_id_0>``, ``<extra_id_1>``, ... when the tokenizer has them (its
``additional_special_tokens_ids``, or those names in its vocab). The BERT Chinese vocab
has none, so pass ``sentinel_ids`` yourself, e.g. ``unused_token_sentinels(vocab)`` maps
sentinel N to ``[unused{N+1}]`` (99 of them). BOS/EOS default to the tokenizer's
``bos``/``eos`` ([BOS]/[EOS] for the BERT tokenizer, as in Megatron), else [CLS]/[SEP].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron_core.data.bert_dataset import (LONG_SENTENCE_LEN, sample_dataset_description,
                                             sentence_sample_mapping)
from megatron_core.errors import DataError


@dataclass
class T5DatasetConfig:
    max_seq_length: int = 512  # encoder
    max_seq_length_dec: int = 128  # decoder
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    short_seq_prob: float = 0.1
    seed: int = 1234
    num_samples: Optional[int] = None  # None: one pass over the documents


def extra_id_sentinels(tokenizer) -> List[int]:
    """The tokenizer's <extra_id_N> ids in order of N; empty if it has none."""
    ids = getattr(tokenizer, "additional_special_tokens_ids", None)
    if ids:
        return [int(i) for i in ids]
    vocab = tokenizer.vocab
    found, n = [], 0
    while f"<extra_id_{n}>" in vocab:
        found.append(int(vocab[f"<extra_id_{n}>"]))
        n += 1
    return found


def unused_token_sentinels(vocab, count: int = 99) -> List[int]:
    """Sentinels taken from BERT's reserved slots: sentinel N is [unused{N+1}]."""
    missing = [f"[unused{n}]" for n in range(1, count + 1) if f"[unused{n}]" not in vocab]
    if missing:
        raise DataError(f"the vocabulary has no {missing[0]}; pass fewer sentinels or "
                        f"give sentinel_ids explicitly.")
    return [int(vocab[f"[unused{n}]"]) for n in range(1, count + 1)]


def span_counts(length: int, noise_density: float, mean_span_length: float):
    """(noise tokens, spans) for a sequence of `length` tokens; (0, 0) if too short."""
    if length < 2:
        return 0, 0
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.RandomState) -> List[tuple]:
    """[start, end) of each corrupted span; the sequence starts with an uncorrupted gap."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    if num_spans == 0:
        return []

    def random_partition(total: int, parts: int) -> np.ndarray:
        if parts == 1:
            return np.array([total])
        cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [total]]))

    noise = random_partition(num_noise, num_spans)
    gaps = random_partition(length - num_noise, num_spans)
    spans, pos = [], 0
    for gap, span in zip(gaps, noise):
        pos += int(gap)
        spans.append((pos, pos + int(span)))
        pos += int(span)
    return spans


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def t5_start_end_ids(tokenizer) -> Tuple[int, int]:
    """(the token the decoder starts from, the token that ends a target): the tokenizer's
    bos/eos ([BOS]/[EOS] for the BERT tokenizer, as in Megatron), else [CLS]/[SEP]. T5
    pretraining, finetuning and generation (inference/text_generation.py) start alike."""
    start = _first_set(getattr(tokenizer, "bos", None), getattr(tokenizer, "cls", None))
    end = _first_set(getattr(tokenizer, "eos", None), getattr(tokenizer, "sep", None))
    if start is None or end is None:
        raise DataError(f"the {getattr(tokenizer, 'name', 'chosen')} tokenizer has no begin/end-of-sequence "
                        f"tokens ([BOS]/[EOS] or [CLS]/[SEP]) for the T5 decoder; use a tokenizer that has them.")
    return int(start), int(end)


def _visible(length: int, real: int) -> np.ndarray:
    return np.arange(length) < real


class T5Dataset(torch.utils.data.Dataset):
    """Map-style T5 pretraining dataset; see the module docstring."""

    def __init__(self, indexed_dataset, tokenizer, config: T5DatasetConfig,
                 document_range: Optional[Tuple[int, int]] = None,
                 cache_dir: Optional[str] = None, split_name: str = "train",
                 sentinel_ids: Optional[Sequence[int]] = None,
                 bos_id: Optional[int] = None, eos_id: Optional[int] = None):
        self.indexed_dataset = indexed_dataset
        self.config = config
        self.pad_id = int(tokenizer.pad)
        if bos_id is None or eos_id is None:
            start, end = t5_start_end_ids(tokenizer)
            bos_id, eos_id = _first_set(bos_id, start), _first_set(eos_id, end)
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)
        self.sentinel_ids = [int(i) for i in (sentinel_ids if sentinel_ids is not None
                                              else extra_id_sentinels(tokenizer))]
        self.max_num_tokens = config.max_seq_length
        self._check_lengths()
        self.description = sample_dataset_description(
            type(self).__name__, indexed_dataset, document_range, split_name, config,
            sentinel_ids=self.sentinel_ids, bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id)

        self.samples_mapping = sentence_sample_mapping(
            indexed_dataset, document_range, self.max_num_tokens, config.short_seq_prob, 1,
            config.seed, config.num_samples, cache_dir, "T5Dataset", split_name)
        if len(self.samples_mapping) == 0:
            name = getattr(indexed_dataset, "path_prefix", "the dataset")
            raise DataError(f"the {split_name} split of {name} has no usable document (every "
                            f"one is empty or has a sentence over {LONG_SENTENCE_LEN} tokens); "
                            f"check the data and --split.")

    def _check_lengths(self) -> None:
        """Fail at construction, not mid-training, if some sample could not fit."""
        cfg = self.config
        worst_dec, worst_spans = 0, 0
        for length in range(1, self.max_num_tokens + 1):
            noise, spans = span_counts(length, cfg.noise_density, cfg.mean_span_length)
            worst_dec = max(worst_dec, 1 + noise + spans)
            worst_spans = max(worst_spans, spans)
        if worst_spans > len(self.sentinel_ids):
            raise DataError(
                f"T5 samples of {self.max_num_tokens} tokens need {worst_spans} sentinel tokens "
                f"but the tokenizer offers {len(self.sentinel_ids)}; pass sentinel_ids (for the "
                f"BERT vocab: t5_dataset.unused_token_sentinels(tokenizer.vocab)) or add "
                f"--vocab-extra-ids.")
        if worst_dec > cfg.max_seq_length_dec:
            raise DataError(f"T5 decoder inputs can reach {worst_dec} tokens but "
                            f"max_seq_length_dec is {cfg.max_seq_length_dec}; raise the decoder "
                            f"sequence length to at least {worst_dec}.")

    def __len__(self) -> int:
        return len(self.samples_mapping)

    def __getitem__(self, idx: int) -> dict:
        start, end, target, _ = (int(v) for v in self.samples_mapping[idx])
        rng = np.random.RandomState((self.config.seed + int(idx)) % 2**32)
        tokens: List[int] = []
        for sent in range(start, end):
            tokens.extend(self.indexed_dataset[sent].tolist())
        truncated = len(tokens) > target
        tokens = tokens[:target]
        spans = random_spans_noise_mask(len(tokens), self.config.noise_density,
                                        self.config.mean_span_length, rng)
        return self._layout(tokens, spans, truncated)

    def _layout(self, tokens: List[int], spans: List[tuple], truncated: bool) -> dict:
        enc, dec_out, pos = [], [], 0
        for sentinel, (s, e) in zip(self.sentinel_ids, spans):
            enc.extend(tokens[pos:s])
            enc.append(sentinel)
            dec_out.append(sentinel)
            dec_out.extend(tokens[s:e])
            pos = e
        enc.extend(tokens[pos:])
        dec_out.append(self.eos_id)
        dec_in = [self.bos_id] + dec_out[:-1]

        sample = t5_sample(enc, dec_in, dec_out, self.config.max_seq_length, self.config.max_seq_length_dec,
                           self.pad_id)
        sample["truncated"] = int(truncated)
        return sample


def t5_sample(encoder_ids: Sequence[int], decoder_input_ids: Sequence[int], labels: Sequence[int],
              encoder_length: int, decoder_length: int, pad_id: int) -> dict:
    """One sample's padded arrays and keep masks (the module docstring's keys; labels and
    decoder inputs are equally long): loss_mask is 1 on every label, 0 on padding."""
    enc, dec_in, dec_out = list(encoder_ids), list(decoder_input_ids), list(labels)
    enc_real, dec_real = _visible(encoder_length, len(enc)), _visible(decoder_length, len(dec_out))
    causal = np.tril(np.ones((decoder_length, decoder_length), dtype=bool))
    return {
        "text_enc": np.array(enc + [pad_id] * (encoder_length - len(enc)), dtype=np.int64),
        "text_dec": np.array(dec_in + [pad_id] * (decoder_length - len(dec_in)), dtype=np.int64),
        "labels": np.array(dec_out + [-1] * (decoder_length - len(dec_out)), dtype=np.int64),
        "loss_mask": dec_real.astype(np.int64),
        "enc_mask": np.outer(enc_real, enc_real).astype(np.int64),
        "dec_mask": (np.outer(dec_real, dec_real) & causal).astype(np.int64),
        "enc_dec_mask": np.outer(dec_real, enc_real).astype(np.int64),
    }
