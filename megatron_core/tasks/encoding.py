"""Examples -> BERT inputs: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, padded.

Token types are 0 for [CLS], a and the first [SEP], 1 for b and its [SEP], 0 for padding;
the padding mask is 1 on real tokens. Padding uses the tokenizer's [PAD] id.

A pair too long for seq_length loses tokens from the end of its longer text, one token at
a time (on a tie, b loses one), as BERT's `_truncate_seq_pair` does; a single text is cut
at its end. transformers' BertTokenizer(truncation="longest_first") gives the same ids,
except where both texts reach equal length with an odd number of tokens still to remove:
it then takes the extra token from a, BERT and this file from b. (Megatron-LM's
tasks/data_utils cuts the joined sequence at its end instead, dropping b first.)

`ClassificationDataset` and `MultipleChoiceDataset` encode every example once, at
construction, count the examples that lost tokens, and print that count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from megatron_core.errors import ConfigError, DataError
from megatron_core.tasks.examples import Example, MultipleChoiceExample


@dataclass
class EncodedText:
    ids: List[int]
    types: List[int]
    padding_mask: List[int]     # 1 = real token, 0 = padding
    truncated: bool


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tokenizer) -> "SpecialIds":
        ids = {name: getattr(tokenizer, name, None) for name in ("cls", "sep", "pad")}
        missing = [f"[{name.upper()}]" for name, value in ids.items() if value is None]
        if missing:
            raise ConfigError(f"the {getattr(tokenizer, 'name', type(tokenizer).__name__)} tokenizer has "
                              f"no {', '.join(missing)} token; classification needs a BERT WordPiece "
                              f"tokenizer (--tokenizer-type BertWordPieceLowerCase).")
        return cls(**{name: int(value) for name, value in ids.items()})


def truncate_longer_first(a: List[int], b: List[int], budget: int) -> Tuple[List[int], List[int]]:
    """Drop tokens from the end of the longer list (b on a tie) until len(a) + len(b) <= budget."""
    keep_a, keep_b = len(a), len(b)
    while keep_a + keep_b > budget:
        if keep_a > keep_b:
            keep_a -= 1
        else:
            keep_b -= 1
    return a[:keep_a], b[:keep_b]


def encode_ids(a: Sequence[int], b: Optional[Sequence[int]], seq_length: int,
               special: SpecialIds) -> EncodedText:
    """The encoding of already tokenized texts (see the module doc)."""
    if seq_length < 3:
        raise ConfigError(f"--seq-length {seq_length} cannot hold [CLS] and [SEP] around a text; "
                          f"use at least 3.")
    a = list(a)
    if b is None:
        truncated = len(a) > seq_length - 2
        a = a[:seq_length - 2]
        ids = [special.cls] + a + [special.sep]
        types = [0] * len(ids)
    else:
        b = list(b)
        truncated = len(a) + len(b) > seq_length - 3
        a, b = truncate_longer_first(a, b, seq_length - 3)
        ids = [special.cls] + a + [special.sep] + b + [special.sep]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    padding = seq_length - len(ids)
    return EncodedText(ids=ids + [special.pad] * padding, types=types + [0] * padding,
                       padding_mask=[1] * len(ids) + [0] * padding, truncated=truncated)


def encode_pair(tokenizer, text_a: str, text_b: Optional[str], seq_length: int) -> EncodedText:
    b = tokenizer.tokenize(text_b) if text_b is not None else None
    return encode_ids(tokenizer.tokenize(text_a), b, seq_length, SpecialIds.of(tokenizer))


def encode_all(tokenizer, pairs: Sequence[Tuple[str, Optional[str]]], seq_length: int) -> List[EncodedText]:
    """encode_pair over many pairs, tokenized in batches."""
    special = SpecialIds.of(tokenizer)
    a_ids = tokenizer.tokenize_batch([a for a, _ in pairs]) if pairs else []
    seconds = [b for _, b in pairs if b is not None]
    b_iter = iter(tokenizer.tokenize_batch(seconds) if seconds else [])
    return [encode_ids(a, next(b_iter) if b is not None else None, seq_length, special)
            for a, (_, b) in zip(a_ids, pairs)]


def truncation_line(truncated: int, total: int, seq_length: int, unit: str = "examples") -> str:
    return (f"truncated {truncated} of {total} {unit} to --seq-length {seq_length} "
            f"(the longer text loses tokens)")


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


class ClassificationDataset(torch.utils.data.Dataset):
    """item -> {"text", "types", "padding_mask": int64[seq], "label": index into `labels`
    (-1 unlabelled), "uid": the example's index}."""

    def __init__(self, examples: Sequence[Example], tokenizer, seq_length: int,
                 labels: Sequence[str], log: Callable[[str], None] = print):
        self.examples = list(examples)
        self.labels = tuple(labels)
        index = {label: i for i, label in enumerate(self.labels)}
        self.label_ids = []
        for example in self.examples:
            if example.label is not None and example.label not in index:
                raise DataError(f"example {example.guid} has label {example.label!r}, which is not "
                                f"among the task's labels ({', '.join(self.labels)}); a dev label the "
                                f"training file never uses needs the label list given explicitly.")
            self.label_ids.append(index[example.label] if example.label is not None else -1)
        self.encoded = encode_all(tokenizer, [(e.text_a, e.text_b) for e in self.examples], seq_length)
        self.truncated = sum(e.truncated for e in self.encoded)
        log(truncation_line(self.truncated, len(self.examples), seq_length))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, idx: int) -> dict:
        encoded = self.encoded[idx]
        return {"text": _tensor(encoded.ids), "types": _tensor(encoded.types),
                "padding_mask": _tensor(encoded.padding_mask),
                "label": _tensor(self.label_ids[idx]), "uid": _tensor(idx)}


class MultipleChoiceDataset(torch.utils.data.Dataset):
    """item -> {"text", "types", "padding_mask": int64[num_choices, seq], "choice_mask":
    int64[num_choices] (1 = a real choice; questions with fewer choices are padded with
    [CLS] [SEP] rows the model must mask out), "label": the right choice (-1 unlabelled),
    "uid"}. num_choices defaults to the most choices any example has."""

    def __init__(self, examples: Sequence[MultipleChoiceExample], tokenizer, seq_length: int,
                 num_choices: Optional[int] = None, log: Callable[[str], None] = print):
        self.examples = list(examples)
        most = max((len(e.choices) for e in self.examples), default=0)
        self.num_choices = num_choices if num_choices is not None else most
        if most > self.num_choices:
            guid = next(e.guid for e in self.examples if len(e.choices) == most)
            raise DataError(f"example {guid} has {most} choices, more than the task's "
                            f"{self.num_choices}; check the file or the task.")
        pairs = [pair for e in self.examples for pair in e.choices]
        encoded = encode_all(tokenizer, pairs, seq_length)
        blank = encode_ids([], None, seq_length, SpecialIds.of(tokenizer))
        self.rows: List[List] = []
        cursor = 0
        for example in self.examples:
            own = encoded[cursor:cursor + len(example.choices)]
            cursor += len(example.choices)
            self.rows.append(own + [blank] * (self.num_choices - len(own)))
        self.truncated = sum(any(c.truncated for c in row) for row in self.rows)
        self.padded = sum(len(e.choices) < self.num_choices for e in self.examples)
        line = truncation_line(self.truncated, len(self.examples), seq_length)
        if self.padded:
            line += f"; padded {self.padded} examples to {self.num_choices} choices"
        log(line)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, idx: int) -> dict:
        example, row = self.examples[idx], self.rows[idx]
        label = example.label if example.label is not None else -1
        return {"text": _tensor([c.ids for c in row]), "types": _tensor([c.types for c in row]),
                "padding_mask": _tensor([c.padding_mask for c in row]),
                "choice_mask": _tensor([1] * len(example.choices) + [0] * (self.num_choices - len(example.choices))),
                "label": _tensor(label), "uid": _tensor(idx)}
