"""Source/target pairs for T5 finetuning, one JSON line each: {"source": ..., "target": ...}
(summarization, question answering; the keys are the caller's).

A line becomes a sample laid out as T5 pretraining's (t5_dataset.t5_sample), so
get_batch_t5 and the T5 forward step read it unchanged:

    encoder input  source ids, cut to encoder_seq_length
    decoder input  [start] + target ids        } both cut to decoder_seq_length
    labels         target ids + [end]          }
    loss_mask      1 on the labels (the target's tokens and the end token), 0 on padding

start/end are T5 pretraining's and generation's ([BOS]/[EOS] for the BERT tokenizer,
t5_dataset.t5_start_end_ids): a finetuned model decodes from the token it was trained
from and stops at the token it learnt to end with. Cut sources and targets are counted
in `report`. A line that cannot be a sample (not JSON, not an object, a key missing or
not a string, an empty source or target) stops the reading with one sentence naming the
file and the line; blank lines are skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch

from megatron_core.data.finetune_dataset import parse_json_record
from megatron_core.data.t5_dataset import t5_sample, t5_start_end_ids
from megatron_core.errors import DataError


@dataclass
class SourceTarget:
    line: int                  # 1-based, as editors show it
    source: str
    target: Optional[str]      # None on a line without one (a file to predict)


def read_source_target_lines(path: str, source_key: str = "source", target_key: str = "target",
                             require_target: bool = True) -> List[SourceTarget]:
    """Every non-blank line of `path`; a bad line is one DataError sentence (module doc)."""
    if not os.path.isfile(path):
        raise DataError(f"data file {path} does not exist; check the path.")
    pairs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            keys = (source_key, target_key) if require_target else (source_key,)
            record = parse_json_record(raw, keys)
            if isinstance(record, dict):
                record = _check_texts(record, source_key, target_key)
            if isinstance(record, str):
                raise DataError(f"{path} line {number}: {record}; fix or remove that line "
                                f'(each line is {{"{source_key}": "...", "{target_key}": "..."}}).')
            pairs.append(SourceTarget(number, record[source_key], record.get(target_key)))
    if not pairs:
        raise DataError(f'{path} holds no line; write one {{"{source_key}": "...", "{target_key}": "..."}} a line.')
    return pairs


def _check_texts(record: dict, source_key: str, target_key: str):
    """The record, or why its source or target cannot be used."""
    if not record[source_key].strip():
        return f'its "{source_key}" is empty'
    if target_key in record:
        if not isinstance(record[target_key], str):
            return f'its "{target_key}" field is not a string'
        if not record[target_key].strip():
            return f'its "{target_key}" is empty'
    return record


@dataclass
class Seq2SeqReport:
    path: str
    samples: int = 0
    truncated_sources: int = 0     # cut to the encoder length
    truncated_targets: int = 0     # target + end token cut to the decoder length

    def summary(self) -> str:
        return (f"{self.path}: {self.samples} samples, {self.truncated_sources} sources truncated to the encoder "
                f"length, {self.truncated_targets} targets truncated to the decoder length")


class Seq2SeqDataset(torch.utils.data.Dataset):
    """Source/target lines of `path`, tokenized once at construction (module doc)."""

    def __init__(self, path: str, tokenizer, encoder_seq_length: int, decoder_seq_length: int,
                 source_key: str = "source", target_key: str = "target"):
        if encoder_seq_length < 1 or decoder_seq_length < 2:
            raise DataError(f"T5 finetuning needs an encoder length of at least 1 and a decoder length of at least 2 "
                            f"(got {encoder_seq_length} and {decoder_seq_length}); raise --encoder-seq-length or "
                            f"--decoder-seq-length.")
        self.encoder_seq_length, self.decoder_seq_length = int(encoder_seq_length), int(decoder_seq_length)
        self.start_id, self.end_id = t5_start_end_ids(tokenizer)
        self.pad_id = int(tokenizer.pad if tokenizer.pad is not None else self.end_id)
        pairs = read_source_target_lines(path, source_key, target_key)
        sources = tokenizer.tokenize_batch([p.source for p in pairs])
        targets = tokenizer.tokenize_batch([p.target for p in pairs])
        self.report = Seq2SeqReport(path, samples=len(pairs))
        self.samples = []      # (encoder ids, target ids)
        for pair, source, target in zip(pairs, sources, targets):
            if not len(source) or not len(target):
                empty = source_key if not len(source) else target_key
                raise DataError(f'{path} line {pair.line}: its "{empty}" has no token the tokenizer knows; fix or '
                                f"remove that line.")
            self.report.truncated_sources += len(source) > self.encoder_seq_length
            self.report.truncated_targets += len(target) + 1 > self.decoder_seq_length
            self.samples.append((list(source)[:self.encoder_seq_length], list(target)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        source, target = self.samples[idx]
        length = self.decoder_seq_length
        decoder_input = ([self.start_id] + target)[:length]
        labels = (target + [self.end_id])[:length]
        return t5_sample(source, decoder_input, labels, self.encoder_seq_length, length, self.pad_id)
