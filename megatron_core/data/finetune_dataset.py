"""Supervised finetuning samples from a JSON-lines file of {"prompt": ..., "text": ...}.

Each line becomes ``prompt ids + text ids + [eod]``. The model is trained only to
produce the text (and the closing eod), never the prompt. Samples look like the GPT
dataset's, plus a loss mask:

* ``text``: int64[seq_length + 1], the tokens, padded (pad id, or eod if the tokenizer
  has no pad); inputs are ``text[:-1]`` and labels ``text[1:]``;
* ``loss_mask``: float32[seq_length], aligned with the labels: ``loss_mask[j]`` is 1
  when ``text[j + 1]`` is a text token or the eod, 0 for prompt tokens and padding.

Longer samples are cut at the end (counted as truncated); a sample whose prompt alone
fills the window has nothing to learn and is dropped (counted). Bad lines (invalid JSON,
not an object, a missing or non-string field) are skipped and reported with their line
numbers, or, with ``strict=True``, stop loading with one sentence naming the file and line.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
import torch

from megatron_core.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class FinetuneReport:
    """What loading a finetune file did; ``summary()`` is the line that gets logged."""
    path: str
    samples: int = 0
    blank_lines: int = 0
    bad_lines: List[Tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    truncated: int = 0  # kept, but cut to seq_length + 1 tokens
    dropped_prompt_too_long: List[int] = field(default_factory=list)  # line numbers

    def summary(self) -> str:
        parts = [f"{self.path}: {self.samples} samples"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to the sequence length")
        if self.dropped_prompt_too_long:
            parts.append(f"{len(self.dropped_prompt_too_long)} dropped because the prompt fills "
                         f"the whole sequence (lines {_first_few(self.dropped_prompt_too_long)})")
        if self.bad_lines:
            numbers = [n for n, _ in self.bad_lines]
            parts.append(f"{len(self.bad_lines)} bad lines skipped (lines {_first_few(numbers)}; "
                         f"first: {self.bad_lines[0][1]})")
        return ", ".join(parts)


def _first_few(numbers: List[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (", ..." if len(numbers) > limit else "")


def parse_json_record(raw: bytes, keys: Sequence[str]):
    """The line's JSON object, or the reason it is unusable as a string: not UTF-8, not
    JSON, not an object, or one of `keys` missing or not a string."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "it is not valid UTF-8"
    except json.JSONDecodeError as err:
        return f"it is not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(record, dict):
        return f"it is a JSON {type(record).__name__}, not an object"
    for key in keys:
        if key not in record:
            return f'it has no "{key}" field'
        if not isinstance(record[key], str):
            return f'its "{key}" field is not a string'
    return record


class FinetuneDataset(torch.utils.data.Dataset):
    """Prompt/text pairs from `path`, tokenized once at construction."""

    def __init__(self, path: str, tokenizer, seq_length: int, strict: bool = False,
                 prompt_key: str = "prompt", text_key: str = "text", append_eod: bool = True):
        if seq_length < 1:
            raise DataError(f"seq_length is {seq_length}; set --seq-length to a positive number.")
        if not os.path.isfile(path):
            raise DataError(f"finetune data file {path} does not exist; check the path.")
        self.path = path
        self.seq_length = int(seq_length)
        self.eod = tokenizer.eod
        if append_eod and self.eod is None:
            raise DataError(f"the {getattr(tokenizer, 'name', 'chosen')} tokenizer has no "
                            f"end-of-document token; pass append_eod=False or use another tokenizer.")
        self.pad_id = int(tokenizer.pad if tokenizer.pad is not None else self.eod)
        self.report = FinetuneReport(path=path)

        line_numbers, prompts, texts = [], [], []
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    self.report.blank_lines += 1
                    continue
                parsed = parse_json_record(raw, (prompt_key, text_key))
                if isinstance(parsed, str):
                    if strict:
                        raise DataError(f"{path}, line {number}: {parsed}; fix or remove that "
                                        f"line, or load without strict mode to skip bad lines.")
                    self.report.bad_lines.append((number, parsed))
                    continue
                line_numbers.append(number)
                prompts.append(parsed[prompt_key])
                texts.append(parsed[text_key])

        prompt_ids = tokenizer.tokenize_batch(prompts) if prompts else []
        text_ids = tokenizer.tokenize_batch(texts) if texts else []
        self.samples: List[Tuple[List[int], int]] = []  # (tokens, prompt length)
        self.line_numbers: List[int] = []
        window = self.seq_length + 1
        for number, p, t in zip(line_numbers, prompt_ids, text_ids):
            if len(p) > self.seq_length:  # not even the first text token is predicted
                self.report.dropped_prompt_too_long.append(number)
                continue
            tokens = list(p) + list(t) + ([int(self.eod)] if append_eod else [])
            if len(tokens) > window:
                self.report.truncated += 1
                tokens = tokens[:window]
            self.samples.append((tokens, len(p)))
            self.line_numbers.append(number)
        self.report.samples = len(self.samples)

        if not self.samples:
            raise DataError(f"{path} has no usable sample ({self.report.summary()}); it needs "
                            f'lines like {{"{prompt_key}": "...", "{text_key}": "..."}}.')
        clean = not (self.report.bad_lines or self.report.truncated
                     or self.report.dropped_prompt_too_long)
        (logger.info if clean else logger.warning)("%s", self.report.summary())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        tokens, prompt_len = self.samples[idx]
        text = np.full(self.seq_length + 1, self.pad_id, dtype=np.int64)
        text[:len(tokens)] = tokens
        # label j is tokens[j + 1]: learn it when it lies past the prompt and is real
        loss_mask = np.zeros(self.seq_length, dtype=np.float32)
        loss_mask[max(prompt_len - 1, 0):len(tokens) - 1] = 1.0
        return {"text": text, "loss_mask": loss_mask}
