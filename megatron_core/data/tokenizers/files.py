"""Checks on tokenizer files, so a wrong path or a file that is not text fails with the flag
that names it."""
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


def read_text_file(path: str, flag: Optional[str], fix: str) -> str:
    """The whole file as UTF-8 text (newlines kept as written); a file that is not UTF-8 is
    one DataError naming the flag (if the user named the file by one), the file, the first
    bad byte and `fix`."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        named = f"{flag} {path}" if flag else path
        raise DataError(f"{named} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); {fix}") from None


def read_wordpiece_vocab(path: str) -> Dict[str, int]:
    """One token per line, id = line number.

    Lines are split on "\\n" only: real vocabularies contain tokens such as U+2028
    that str.splitlines() would treat as line breaks, shifting every later id.
    """
    text = read_text_file(path, "--vocab-file", "pass a WordPiece vocab.txt saved as UTF-8 "
                                                "(e.g. iconv -t UTF-8), one token per line.")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: Dict[str, int] = {}
    for index, token in enumerate(lines):
        vocab[token.rstrip("\r")] = index  # a later duplicate wins, as in BERT's loader
    if not vocab:
        raise DataError(f"--vocab-file {path} is empty; pass a WordPiece vocab.txt.")
    return vocab
