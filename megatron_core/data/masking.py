"""Masked-language-model corruption for BERT-style pretraining.

Semantics follow Megatron-LM's ``create_masked_lm_predictions``:

* about ``masked_lm_prob`` of the sequence (counted over all tokens, [CLS]/[SEP]
  included, as Megatron does) is selected, never more than ``max_predictions_per_seq``;
* selection works on *words*: a token whose word-start flag is False always travels with
  the token before it (whole-word masking), and an n-gram of 1..max_ngrams consecutive
  words is drawn with probability proportional to 1/n (or geometric, for span masking);
* of the selected tokens 80% become [MASK], 10% a random vocabulary token, 10% stay;
* special tokens ([CLS], [SEP], ...) are never selected;
* every random draw comes from the numpy RandomState passed in, so a sample is fully
  determined by that generator's seed.

Word starts are passed in as flags instead of being read from the vocabulary, so the
same code serves English WordPiece ("##" continuation, see ``wordpiece_word_starts``)
and Chinese whole-word masking, whose word boundaries come from jieba
(see ``chinese_wwm.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import numpy as np


@dataclass
class MaskedSpan:
    """One unit chosen for masking: a word or n-gram of words (positions ascending)."""
    positions: List[int]
    labels: List[int]


@dataclass
class MaskedLmResult:
    tokens: List[int]  # the corrupted sequence
    positions: List[int] = field(default_factory=list)  # masked positions, ascending
    labels: List[int] = field(default_factory=list)  # original ids at `positions`
    spans: List[MaskedSpan] = field(default_factory=list)  # sorted by first position


def wordpiece_word_starts(tokens: Sequence[int], inv_vocab) -> List[bool]:
    """English WordPiece word starts: a "##" piece continues the previous word."""
    return [not str(inv_vocab[int(t)]).startswith("##") for t in tokens]


def random_replacement_ids(inv_vocab) -> np.ndarray:
    """Ids a masked token may be swapped for in the 10% "random token" case.

    Megatron draws from the whole vocabulary; we leave out bracketed specials such as
    [PAD], [SEP], [MASK] and the [unusedN] slots, which would only teach the model to
    read noise as structure.
    """
    ids = [int(i) for i, tok in inv_vocab.items()
           if not (str(tok).startswith("[") and str(tok).endswith("]"))
           and not (str(tok).startswith("<") and str(tok).endswith(">"))]
    return np.array(sorted(ids), dtype=np.int64)


def _candidate_words(tokens: Sequence[int], word_starts: Optional[Sequence[bool]],
                     never_mask: set, whole_word: bool):
    """Group maskable positions into words; also return the run (stretch between
    special tokens) of each word, so that n-grams stay contiguous."""
    words: List[List[int]] = []
    runs: List[int] = []
    run = 0
    prev_maskable = False
    for i, tok in enumerate(tokens):
        if int(tok) in never_mask:
            run += 1
            prev_maskable = False
            continue
        continues = (whole_word and word_starts is not None and prev_maskable
                     and not word_starts[i])
        if continues:
            words[-1].append(i)
        else:
            words.append([i])
            runs.append(run)
        prev_maskable = True
    return words, runs


def create_masked_lm_predictions(
    tokens: Sequence[int],
    *,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    mask_id: int,
    random_token_ids: np.ndarray,
    never_mask: Iterable[int],
    np_rng: np.random.RandomState,
    word_starts: Optional[Sequence[bool]] = None,
    whole_word: bool = True,
    max_ngrams: int = 3,
    favor_longer_ngram: bool = False,
    geometric_p: Optional[float] = None,
) -> MaskedLmResult:
    """Mask ``tokens`` BERT-style; see the module docstring for the rules.

    ``word_starts[i]`` is False when token i continues the word of token i-1; with
    ``word_starts=None`` or ``whole_word=False`` every token is its own word (plain
    token masking). ``geometric_p`` switches the n-gram length to
    min(Geometric(p), max_ngrams), as in SpanBERT-style masking.
    """
    if word_starts is not None and len(word_starts) != len(tokens):
        raise ValueError(f"word_starts has {len(word_starts)} flags for {len(tokens)} tokens")
    never_mask = {int(t) for t in never_mask}
    output = [int(t) for t in tokens]
    result = MaskedLmResult(tokens=output)
    if masked_lm_prob <= 0:
        return result

    words, runs = _candidate_words(tokens, word_starts, never_mask, whole_word)
    budget = min(int(max_predictions_per_seq),
                 max(1, int(round(len(tokens) * masked_lm_prob))))

    ngram_weights = 1.0 / np.arange(1, max_ngrams + 1)
    if favor_longer_ngram:
        ngram_weights = ngram_weights[::-1].copy()

    covered = set()
    order = np.arange(len(words))
    np_rng.shuffle(order)
    for start in order:
        if len(result.positions) >= budget:
            break
        # n-grams from `start` that stay inside one run of ordinary tokens
        longest = 1
        while (longest < max_ngrams and start + longest < len(words)
               and runs[start + longest] == runs[start]):
            longest += 1
        if geometric_p is None:
            p = ngram_weights[:longest] / ngram_weights[:longest].sum()
            n = int(np_rng.choice(np.arange(1, longest + 1), p=p))
        else:
            n = min(int(np_rng.geometric(geometric_p)), longest)
        span = [i for w in words[start:start + n] for i in w]
        # shrink the n-gram rather than overshoot the budget; a single word that does
        # not fit is skipped (it is never cut, that would break whole-word masking)
        while n > 1 and len(result.positions) + len(span) > budget:
            n -= 1
            span = [i for w in words[start:start + n] for i in w]
        if len(result.positions) + len(span) > budget:
            continue
        if any(i in covered for i in span):
            continue
        for i in span:
            covered.add(i)
            if np_rng.random_sample() < 0.8:
                output[i] = mask_id
            elif np_rng.random_sample() < 0.5:
                pass  # keep the original token; it is still predicted
            else:
                output[i] = int(random_token_ids[np_rng.randint(0, len(random_token_ids))])
            result.positions.append(i)
            result.labels.append(int(tokens[i]))
        result.spans.append(MaskedSpan(positions=span, labels=[int(tokens[i]) for i in span]))

    pairs = sorted(zip(result.positions, result.labels))
    result.positions = [p for p, _ in pairs]
    result.labels = [l for _, l in pairs]
    result.spans.sort(key=lambda s: s.positions[0])
    return result
