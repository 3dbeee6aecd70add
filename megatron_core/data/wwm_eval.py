"""How whole Chinese whole-word masking really is, measured against a human segmentation.

``measure_wwm(texts, gold_words, tokenizer)`` masks each text the way BertDataset does
with ``whole_word_masking="jieba"``: the word-start flags come from token ids alone
(``chinese_wwm.word_start_flags_from_ids``, what runs at sample time) and masking is
``masking.create_masked_lm_predictions``. Each masked span is then located in the original
text (``chinese_wwm.align_tokens``) and compared with the gold words by character offsets:

* ``whole_word_share``: with one word per span (max_ngrams=1), the share of masked spans
  that are exactly one gold word: not a piece of one, not two words glued together;
* ``ngram_clean_share``: with BERT's default n-grams (max_ngrams=3), the share of spans
  that start and end on gold word boundaries (no gold word is cut);
* the same two for plain token masking, as the baseline WWM has to beat;
* jieba's word precision / recall / F1 against the gold words.

Spans touching a token with no place in the text ([UNK]) are left out; how many (in the
WWM, one-word-per-span run) is reported as ``unaligned_spans_left_out``.
Used by tests/test_wwm_gold.py (200 lines) and bench/wwm_gold.py (the whole corpus).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from megatron_core.data import chinese_wwm
from megatron_core.data.masking import create_masked_lm_predictions, random_replacement_ids


def read_gold(segmented_path: str) -> List[List[str]]:
    """Words of each line of a segmented file (words separated by TABs)."""
    with open(segmented_path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def check_alignment(texts: Sequence[str], gold_words: Sequence[Sequence[str]]) -> None:
    """Line i of the segmentation must be line i of the corpus, split into words."""
    if len(texts) != len(gold_words):
        raise ValueError(f"the corpus has {len(texts)} texts but the segmentation "
                         f"{len(gold_words)} lines; they must correspond line for line.")
    for i, (text, words) in enumerate(zip(texts, gold_words)):
        if "".join(words) != text:
            raise ValueError(f"line {i + 1}: the segmented words do not join to the text; "
                             f"the two files are not aligned.")


def _word_spans(words: Sequence[str]) -> Set[Tuple[int, int]]:
    spans, offset = set(), 0
    for w in words:
        spans.add((offset, offset + len(w)))
        offset += len(w)
    return spans


def measure_wwm(texts: Sequence[str], gold_words: Sequence[Sequence[str]], tokenizer,
                masked_lm_prob: float = 0.15, seed: int = 0) -> Dict[str, float]:
    check_alignment(texts, gold_words)
    inv = tokenizer.inv_vocab
    random_ids = random_replacement_ids(inv)
    never_mask = {tokenizer.cls, tokenizer.sep, tokenizer.pad}
    # (whole_word, max_ngrams) -> [spans measured, hits]
    runs = {(True, 1): [0, 0], (False, 1): [0, 0], (True, 3): [0, 0], (False, 3): [0, 0]}
    unaligned = 0
    tp = n_jieba = n_gold = 0
    for k, (text, words) in enumerate(zip(texts, gold_words)):
        gold = _word_spans(words)
        boundaries = {0} | {end for _, end in gold}
        jieba = set(chinese_wwm.jieba_word_spans(text))
        tp += len(gold & jieba)
        n_jieba += len(jieba)
        n_gold += len(gold)

        ids = tokenizer.tokenize(text)
        if not ids:
            continue
        tokens = [tokenizer.cls] + list(ids) + [tokenizer.sep]
        offsets = [None] + chinese_wwm.align_tokens(text, [inv[i] for i in ids]) + [None]
        flags = chinese_wwm.word_start_flags_from_ids(tokens, inv)
        for (whole_word, max_ngrams), tally in runs.items():
            out = create_masked_lm_predictions(
                tokens, masked_lm_prob=masked_lm_prob, max_predictions_per_seq=10 ** 6,
                mask_id=tokenizer.mask, random_token_ids=random_ids, never_mask=never_mask,
                np_rng=np.random.RandomState(seed + k), word_starts=flags,
                whole_word=whole_word, max_ngrams=max_ngrams)
            for span in out.spans:
                chars = [offsets[p] for p in span.positions]
                if any(c is None for c in chars):
                    unaligned += whole_word and max_ngrams == 1
                    continue
                start, end = chars[0][0], chars[-1][1]
                tally[0] += 1
                if max_ngrams == 1:
                    tally[1] += (start, end) in gold
                else:
                    tally[1] += start in boundaries and end in boundaries
    share = {key: hits / max(n, 1) for key, (n, hits) in runs.items()}
    precision, recall = tp / max(n_jieba, 1), tp / max(n_gold, 1)
    return {
        "documents": len(texts),
        "gold_words": n_gold,
        "masked_spans_wwm": runs[(True, 1)][0],
        "whole_word_share": round(share[(True, 1)], 4),
        "whole_word_share_token_masking": round(share[(False, 1)], 4),
        "masked_spans_wwm_ngram3": runs[(True, 3)][0],
        "ngram_clean_share": round(share[(True, 3)], 4),
        "ngram_clean_share_token_masking": round(share[(False, 3)], 4),
        "unaligned_spans_left_out": unaligned,
        "jieba_word_precision": round(precision, 4),
        "jieba_word_recall": round(recall, 4),
        "jieba_word_f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
    }
