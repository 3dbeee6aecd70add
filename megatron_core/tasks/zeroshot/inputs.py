"""What the evaluation reads: the texts of --valid-data, the words they hold, and LAMBADA's
(context, last word) split.

Files. A file whose first non-blank line is a JSON object is JSON lines: one object a line,
its text under --text-key ("text"). Any other file is plain text, read whole (Megatron-LM's
WikiText-103 evaluation reads the file as one string). For perplexity the texts of a
JSON-lines file are joined with newlines into one stream.

Words (for the word-level "adjusted" perplexity, metrics.py). Megatron-LM counts
`len(text.strip().split(" "))`: pieces between single spaces, which for WikiText's
space-separated tokens is the number of words (newlines do not separate there, runs of
spaces count empty pieces). Here "whitespace" counts `len(text.split())`: runs of any
whitespace separate, nothing is empty; for space-separated text the two agree up to line
breaks. Chinese (and Japanese) text has no spaces, so whitespace would count whole
paragraphs as words; "cjk-characters" counts each CJK ideograph, CJK punctuation mark and
full-width character as a word, and each whitespace-separated run of other characters
between them as one word. "auto" takes cjk-characters when those characters are more than
half of the text's non-whitespace characters, else whitespace; the output names the basis.

LAMBADA (Megatron-LM's `_LambadaDataset.get_tokens`): the target is the text's last word.
  strict      the last whitespace-separated word w, found with text.rfind(w); the context is
              the text before it, stripped, tokenized alone, and the target is tokenize(" " + w)
              (a byte-level BPE gives the word its leading-space tokens); correct when every
              target token is the argmax given the context and the target tokens before it.
  last-token  (Megatron-LM without --strict-lambada) the whole text tokenized; the target is
              its last token, the context every token before it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Tuple

from ...errors import ConfigError, DataError

WORD_COUNTS = ("auto", "whitespace", "cjk-characters")

_WIDE = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002ffff"
_WIDE_CHARACTER = re.compile(f"[{_WIDE}]")
_WIDE_WORD = re.compile(f"[{_WIDE}]|[^\\s{_WIDE}]+")
BASES = {"whitespace": "whitespace-separated words (Megatron-LM splits on single spaces)",
         "cjk-characters": "CJK characters, each a word, and whitespace-separated runs of other characters"}


@dataclass(frozen=True)
class Texts:
    path: str
    texts: List[str]
    line_numbers: List[int]     # of each text in the file (1-based); [1] for a plain text file
    json_lines: bool


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def read_texts(path: str, text_key: str = "text") -> Texts:
    """The file's texts (module doc); one sentence for a missing file, a bad line or a missing key."""
    if not os.path.isfile(path):
        raise ConfigError(f"--valid-data {path} does not exist; give the path of a text or JSON-lines file.")
    with open(path, encoding="utf-8") as f:
        content = f.read()
    lines = content.split("\n")      # never splitlines(): U+2028 may sit inside a text
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"--valid-data {path} is empty; give a file that holds text.")
    if not _is_json_object(first):
        return Texts(path, [content], [1], json_lines=False)
    texts, numbers = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path} line {number} is not JSON ({e}); write one JSON object a line.") from None
        if not isinstance(record, dict) or text_key not in record:
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else "none"
            raise DataError(f"{path} line {number} has no {text_key!r} key (its keys: {keys}); give the key that "
                            f"holds the text with --text-key.")
        if not isinstance(record[text_key], str):
            raise DataError(f"{path} line {number}: {text_key!r} holds a {type(record[text_key]).__name__}, not a "
                            f"string; give the key that holds the text with --text-key.")
        texts.append(record[text_key])
        numbers.append(number)
    return Texts(path, texts, numbers, json_lines=True)


def count_words(text: str, basis: str = "auto") -> Tuple[int, str]:
    """(number of words, the basis used: "whitespace" or "cjk-characters"), module doc."""
    if basis not in WORD_COUNTS:
        raise ConfigError(f"--word-count must be one of {', '.join(WORD_COUNTS)}, got {basis!r}.")
    if basis == "auto":
        visible = sum(1 for c in text if not c.isspace())
        wide = len(_WIDE_CHARACTER.findall(text))
        basis = "cjk-characters" if visible and 2 * wide > visible else "whitespace"
    if basis == "whitespace":
        return len(text.split()), basis
    return len(_WIDE_WORD.findall(text)), basis


@dataclass(frozen=True)
class LambadaSample:
    context: List[int]
    target: List[int]


def lambada_sample(text: str, tokenize: Callable[[str], List[int]], strict: bool, where: str) -> LambadaSample:
    """The (context, target) tokens of one LAMBADA text (module doc); `where` names it in errors."""
    words = text.split()
    if not strict:
        ids = tokenize(text)
        if len(ids) < 2:
            raise DataError(f"{where} has {len(ids)} token(s); a LAMBADA text needs a context and a last word.")
        return LambadaSample(ids[:-1], ids[-1:])
    if len(words) < 2:
        raise DataError(f"{where} has no space before its last word; a LAMBADA text is a context, a space and the "
                        f"word to predict.")
    last = words[-1]
    context = tokenize(text[:text.rfind(last)].strip())
    target = tokenize(" " + last)
    if not context or not target:
        raise DataError(f"{where} tokenizes to an empty context or last word; check the text and the tokenizer.")
    return LambadaSample(context, target)


def lambada_samples(texts: Texts, tokenize: Callable[[str], List[int]], strict: bool) -> List[LambadaSample]:
    if not texts.json_lines:
        raise DataError(f"--task lambada reads JSON lines (one {{\"text\": ...}} a line); {texts.path} is plain "
                        f"text.")
    return [lambada_sample(text, tokenize, strict, f"{texts.path} line {number}")
            for text, number in zip(texts.texts, texts.line_numbers)]


def joined_text(texts: Texts) -> str:
    """The perplexity stream's text: a plain file as it is, JSON-lines texts joined by newlines."""
    return "\n".join(texts.texts) if texts.json_lines else texts.texts[0]

