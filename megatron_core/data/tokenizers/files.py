"""Checks on tokenizer files, so a wrong path fails with the flag that names it."""
from __future__ import annotations

import os
from typing import Dict, Optional

from megatron_core.errors import DataError


def require_file(path: Optional[str], flag: str, tokenizer_type: str) -> str:
    if not path:
        raise DataError(f"--tokenizer-type {tokenizer_type} needs {flag}; pass the path to it.")
    if not os.path.isfile(path):
        raise DataError(f"{flag} {path} does not exist; check the path.")
    return path


def read_wordpiece_vocab(path: str) -> Dict[str, int]:
    """One token per line, id = line number.

    Lines are split on "\\n" only: real vocabularies contain tokens such as U+2028
    that str.splitlines() would treat as line breaks, shifting every later id.
    """
    with open(path, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: Dict[str, int] = {}
    for index, token in enumerate(lines):
        vocab[token.rstrip("\r")] = index  # a later duplicate wins, as in BERT's loader
    if not vocab:
        raise DataError(f"--vocab-file {path} is empty; pass a WordPiece vocab.txt.")
    return vocab
