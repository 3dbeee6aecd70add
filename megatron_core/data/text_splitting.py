"""Sentence splitting for Chinese and English text (preprocess_data --split-sentences).

Rule-based, no model download. A sentence ends at:

* Chinese terminators 。！？；… (and runs of them, e.g. ……, ！？), always;
* English . ! ? when followed by whitespace or the end of text (so 3.14, e.g.x and
  URLs do not split), but not after common abbreviations (Mr., Dr., e.g., U.S.) or a
  single capital initial (J. Smith);
* a newline.

Closing quotes and brackets that follow a terminator stay with its sentence:
他说：“好。”然后 -> 他说：“好。” | 然后.
"""
from __future__ import annotations

import re
from typing import List

_CLOSERS = "”’\"'）)」』】》〉]"
_TERMINATOR = re.compile(
    r"(?:[。！？；]+|…+|\.{3,}|[.!?]+)[" + re.escape(_CLOSERS) + r"]*")

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e u.s u.k a.m p.m no fig inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split())
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _is_cjk_terminator(mark: str) -> bool:
    return mark[0] in "。！？；…"


def _ends_sentence(text: str, match: re.Match) -> bool:
    mark = match.group(0)
    if _is_cjk_terminator(mark):
        return True
    after = match.end()
    # English punctuation only ends a sentence before whitespace or the end of text.
    if after < len(text) and not text[after].isspace():
        return False
    if mark[0] == "." and not mark.startswith("..."):
        word = _WORD_BEFORE.search(text, 0, match.start())
        if word:
            token = word.group(1)
            if token.lower() in _ABBREVIATIONS or (len(token) == 1 and token.isupper()):
                return False
    return True


def split_sentences(text: str) -> List[str]:
    """Sentences of `text`, stripped, empty ones dropped; joining them loses only spaces."""
    sentences: List[str] = []
    for line in text.split("\n"):
        start = 0
        for match in _TERMINATOR.finditer(line):
            if _ends_sentence(line, match):
                sentences.append(line[start:match.end()])
                start = match.end()
        sentences.append(line[start:])
    return [s.strip() for s in sentences if s.strip()]
