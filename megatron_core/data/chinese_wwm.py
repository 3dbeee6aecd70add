"""Word-start flags for Chinese whole-word masking (WWM), from jieba segmentation.

The BERT Chinese vocabulary has one token per Han character, so WordPiece's "##" tells
nothing about Chinese words. As Chinese-BERT-wwm and Erlangshen did, we segment the
text into words (here with jieba) and call a token a *continuation* when it lies in the
same word as the token before it. ``masking.create_masked_lm_predictions`` then masks
such tokens together with their word.

Two entry points:

* ``word_start_flags(text, token_ids, inv_vocab)``: from the original text; tokens
  are aligned to character offsets, and tokens that cannot be aligned (e.g. [UNK])
  default to word starts.
* ``word_start_flags_from_ids(token_ids, inv_vocab)``: from token ids alone, for use at
  sample time; the text is rebuilt from the token strings (exact for Han characters).

jieba is initialized once per process, quietly, with its default dictionary and HMM on,
which makes segmentation deterministic for a given jieba version.
"""
from __future__ import annotations

import logging
import unicodedata
from typing import List, Optional, Sequence, Tuple

Span = Tuple[int, int]

_jieba_tokenizer = None


def get_jieba(user_dict: Optional[str] = None):
    """The process-wide jieba tokenizer, built on first use without stderr chatter."""
    global _jieba_tokenizer
    if _jieba_tokenizer is None:
        try:
            import jieba
        except ImportError as exc:  # jieba is a dependency, but be explicit if it is missing
            raise ImportError("Chinese whole-word masking needs jieba: pip install jieba") from exc
        jieba.setLogLevel(logging.WARNING)  # silences "Building prefix dict ..." on stderr
        # our own instance: a user's changes to the global jieba.dt do not leak in
        tokenizer = jieba.Tokenizer()
        tokenizer.initialize()
        _jieba_tokenizer = tokenizer
    if user_dict is not None:
        _jieba_tokenizer.load_userdict(user_dict)
    return _jieba_tokenizer


def jieba_word_spans(text: str, hmm: bool = True) -> List[Span]:
    """[start, end) character offsets of jieba's words; they tile the text."""
    return [(start, end) for _, start, end in get_jieba().tokenize(text, HMM=hmm)]


def _is_special(token: str) -> bool:
    return len(token) > 2 and token.startswith("[") and token.endswith("]")


def _piece(token: str) -> str:
    return token[2:] if token.startswith("##") else token


def _normalize_with_offsets(text: str, lowercase: bool):
    """BERT's normalization (lowercase, NFD, accents dropped, whitespace and control
    characters removed), keeping for every output character its offset in `text`."""
    chars, offsets = [], []
    for offset, ch in enumerate(text):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") or ch == "\ufffd":
            continue
        if lowercase:
            ch = ch.lower()
        for sub in unicodedata.normalize("NFD", ch) if lowercase else ch:
            if lowercase and unicodedata.category(sub) == "Mn":
                continue
            chars.append(sub)
            offsets.append(offset)
    return "".join(chars), offsets


def align_tokens(text: str, tokens: Sequence[str], lowercase: bool = True,
                 max_skip: int = 32) -> List[Optional[Span]]:
    """Character span in `text` of each token string, or None where it cannot be found.

    Tokens are matched in order; after an unmatched token (such as [UNK]) the next one
    is searched up to `max_skip` normalized characters ahead, which re-synchronizes
    without letting one miss jump over a whole sentence.
    """
    norm, offsets = _normalize_with_offsets(text, lowercase)
    spans: List[Optional[Span]] = []
    cursor = 0
    for token in tokens:
        piece = _piece(token)
        if _is_special(token) or not piece:
            spans.append(None)
            continue
        if lowercase:
            piece = piece.lower()
        pos = norm.find(piece, cursor, cursor + max_skip + len(piece))
        if pos < 0:
            spans.append(None)
            continue
        end = pos + len(piece)
        spans.append((offsets[pos], offsets[end - 1] + 1))
        cursor = end
    return spans


def flags_from_spans(token_spans: Sequence[Optional[Span]], tokens: Sequence[str],
                     words: Sequence[Span]) -> List[bool]:
    """A token is a word start unless it lies in the same word as the previous token,
    or it is a "##" piece following an aligned token. Unaligned tokens start words."""
    word_of = {}
    for w, (start, end) in enumerate(words):
        for c in range(start, end):
            word_of[c] = w
    flags = []
    prev: Optional[Span] = None
    for span, token in zip(token_spans, tokens):
        if span is None:
            flags.append(True)
        elif prev is None:
            flags.append(True)
        elif token.startswith("##"):
            flags.append(False)
        else:
            same = word_of.get(span[0]) is not None and word_of.get(span[0]) == word_of.get(prev[1] - 1)
            flags.append(not same)
        prev = span
    return flags


def word_start_flags(text: str, token_ids: Sequence[int], inv_vocab,
                     lowercase: bool = True) -> List[bool]:
    """Word-start flag per token of `token_ids`, the tokenization of `text`."""
    tokens = [str(inv_vocab[int(t)]) for t in token_ids]
    spans = align_tokens(text, tokens, lowercase=lowercase)
    return flags_from_spans(spans, tokens, jieba_word_spans(text))


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def text_from_ids(token_ids: Sequence[int], inv_vocab) -> Tuple[str, List[Optional[Span]], List[str]]:
    """Rebuild a text from token strings, with the span of each token in it.

    Pieces are joined without spaces (Chinese has none), except that a space separates
    two whole tokens that would otherwise glue Latin letters or digits together.
    Special tokens get no span and are replaced by a space, so no word crosses them.
    """
    parts: List[str] = []
    spans: List[Optional[Span]] = []
    tokens = [str(inv_vocab[int(t)]) for t in token_ids]
    length = 0
    for token in tokens:
        if _is_special(token):
            parts.append(" ")
            length += 1
            spans.append(None)
            continue
        piece = _piece(token)
        if (not token.startswith("##") and parts and parts[-1]
                and _ascii_alnum(parts[-1][-1]) and piece and _ascii_alnum(piece[0])):
            parts.append(" ")
            length += 1
        parts.append(piece)
        spans.append((length, length + len(piece)) if piece else None)
        length += len(piece)
    return "".join(parts), spans, tokens


def word_start_flags_from_ids(token_ids: Sequence[int], inv_vocab) -> List[bool]:
    """Word-start flags computed from token ids alone (no original text needed)."""
    text, spans, tokens = text_from_ids(token_ids, inv_vocab)
    return flags_from_spans(spans, tokens, jieba_word_spans(text))
