"""Masked-LM corruption: proportions, special tokens, whole words, determinism, and
Chinese whole-word masking measured against a human word segmentation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_core.data import chinese_wwm
from megatron_core.data.masking import (create_masked_lm_predictions, random_replacement_ids,
                                        wordpiece_word_starts)

DATA = os.path.join(os.path.dirname(__file__), "data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny WordPiece vocabulary: specials, whole words, and "##" continuations.
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "run", "play",
          "jump", "house", "##s", "##ing", "##ed", "##er", "##ly", "un", "##believ", "##able"]
TOKENS += [f"w{i}" for i in range(80)]  # more whole words, so random replacements rarely repeat
VOCAB = {t: i for i, t in enumerate(TOKENS)}
INV = {i: t for t, i in VOCAB.items()}
PAD, CLS, SEP, MASK = VOCAB["[PAD]"], VOCAB["[CLS]"], VOCAB["[SEP]"], VOCAB["[MASK]"]
WORD_IDS = [i for t, i in VOCAB.items() if not t.startswith(("[", "##"))]
PIECE_IDS = [i for t, i in VOCAB.items() if t.startswith("##")]


def random_sentence(rng, n_words):
    """Token ids of n_words words, each a word start followed by 0-2 "##" pieces."""
    ids = []
    for _ in range(n_words):
        ids.append(int(rng.choice(WORD_IDS)))
        ids.extend(int(rng.choice(PIECE_IDS)) for _ in range(rng.randint(0, 3)))
    return ids


def random_pair(rng):
    a, b = random_sentence(rng, rng.randint(10, 40)), random_sentence(rng, rng.randint(10, 40))
    return [CLS] + a + [SEP] + b + [SEP]


def mask(tokens, seed, **kw):
    args = dict(masked_lm_prob=0.15, max_predictions_per_seq=1000, mask_id=MASK,
                random_token_ids=random_replacement_ids(INV), never_mask={CLS, SEP, PAD},
                np_rng=np.random.RandomState(seed),
                word_starts=wordpiece_word_starts(tokens, INV))
    args.update(kw)
    return create_masked_lm_predictions(tokens, **args)


def test_plain_masking_proportions_15_percent_and_80_10_10():
    rng = np.random.RandomState(0)
    total = masked = as_mask = kept = replaced = 0
    for seed in range(1500):
        tokens = random_pair(rng)
        out = mask(tokens, seed, whole_word=False, max_ngrams=1)
        total += len(tokens)
        masked += len(out.positions)
        for p, label in zip(out.positions, out.labels):
            assert label == tokens[p]
            if out.tokens[p] == MASK:
                as_mask += 1
            elif out.tokens[p] == tokens[p]:
                kept += 1
            else:
                replaced += 1
        untouched = set(range(len(tokens))) - set(out.positions)
        assert all(out.tokens[i] == tokens[i] for i in untouched)
    assert abs(masked / total - 0.15) < 0.005
    # a random replacement equal to the original counts as kept: 10% * 1/96 at most
    assert abs(as_mask / masked - 0.80) < 0.02
    assert abs(kept / masked - 0.10) < 0.015
    assert abs(replaced / masked - 0.10) < 0.015


def test_whole_word_masking_keeps_hash_words_together_and_near_15_percent():
    rng = np.random.RandomState(1)
    total = masked = multi_piece_spans = 0
    for seed in range(800):
        tokens = random_pair(rng)
        starts = wordpiece_word_starts(tokens, INV)
        out = mask(tokens, seed)
        chosen = set(out.positions)
        total += len(tokens)
        masked += len(chosen)
        for p in chosen:
            # the whole word around p: back to its start, forward over "##" pieces
            s = p
            while not starts[s]:
                s -= 1
            e = p + 1
            while e < len(tokens) and not starts[e] and tokens[e] not in (CLS, SEP):
                e += 1
            assert set(range(s, e)) <= chosen, f"word {s}:{e} only partly masked"
        multi_piece_spans += sum(len(sp.positions) > 1 for sp in out.spans)
    assert abs(masked / total - 0.15) < 0.02
    assert multi_piece_spans > 0


def test_special_tokens_never_masked_and_never_used_as_replacement():
    rng = np.random.RandomState(2)
    specials = {CLS, SEP, PAD, MASK}
    for seed in range(300):
        tokens = random_pair(rng)
        # a sequence that is mostly specials must still leave them alone
        out = mask(tokens, seed, masked_lm_prob=0.9)
        for i, t in enumerate(tokens):
            if t in (CLS, SEP):
                assert i not in out.positions and out.tokens[i] == t
        for p in out.positions:
            assert out.tokens[p] not in specials - {MASK}
    assert not set(random_replacement_ids(INV).tolist()) & specials


def test_deterministic_given_seed_and_seed_matters():
    tokens = random_pair(np.random.RandomState(3))
    a, b, c = mask(tokens, 7), mask(tokens, 7), mask(tokens, 8)
    assert a.tokens == b.tokens and a.positions == b.positions and a.labels == b.labels
    assert (a.positions, a.tokens) != (c.positions, c.tokens)


def test_budget_and_zero_probability():
    rng = np.random.RandomState(4)
    for seed in range(200):
        tokens = random_pair(rng)
        assert len(mask(tokens, seed, max_predictions_per_seq=5).positions) <= 5
    out = mask(tokens, 0, masked_lm_prob=0.0)
    assert out.positions == [] and out.tokens == tokens


def test_ngram_spans_are_contiguous_words_and_stay_between_separators():
    rng = np.random.RandomState(5)
    lengths = set()
    for seed in range(300):
        tokens = random_pair(rng)
        starts = wordpiece_word_starts(tokens, INV)
        out = mask(tokens, seed, max_ngrams=3)
        for span in out.spans:
            assert span.positions == list(range(span.positions[0], span.positions[-1] + 1))
            assert not {CLS, SEP} & {tokens[p] for p in span.positions}
            lengths.add(sum(starts[p] for p in span.positions))
        for span in mask(tokens, seed, max_ngrams=1).spans:
            assert sum(starts[p] for p in span.positions) == 1
    assert lengths == {1, 2, 3}


def test_wrong_number_of_word_flags_is_refused():
    with pytest.raises(ValueError):
        mask([CLS, 5, 6, SEP], 0, word_starts=[True, True])


# ------------------------------------------------------------------ Chinese whole words

def test_align_tokens_handles_case_multichar_tokens_and_unk():
    text = "Ａ股１２月 Hello—世界"
    tokens = ["Ａ", "股", "１２", "月", "hello", "[UNK]", "世", "界"]
    spans = chinese_wwm.align_tokens(text, tokens)
    assert spans == [(0, 1), (1, 2), (2, 4), (4, 5), (6, 11), None, (12, 13), (13, 14)]


def test_word_start_flags_follow_jieba_words():
    vocab = {t: i for i, t in enumerate(["[CLS]", "[SEP]", "[UNK]", "我", "爱", "北", "京",
                                         "天", "安", "门"])}
    inv = {i: t for t, i in vocab.items()}
    text = "我爱北京天安门"
    ids = [vocab[c] for c in text]
    words = ["".join(text[s:e]) for s, e in chinese_wwm.jieba_word_spans(text)]
    assert words == ["我", "爱", "北京", "天安门"]
    expected = [True, True, True, False, True, False, False]
    assert chinese_wwm.word_start_flags(text, ids, inv) == expected
    assert chinese_wwm.word_start_flags_from_ids(ids, inv) == expected
    # a special token in the middle breaks words
    with_sep = ids[:3] + [vocab["[SEP]"]] + ids[3:]
    assert chinese_wwm.word_start_flags_from_ids(with_sep, inv)[3:5] == [True, True]


def test_jieba_is_quiet():
    code = ("from megatron_core.data.chinese_wwm import jieba_word_spans;"
            "print(jieba_word_spans('中华人民共和国成立了'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def _load_news():
    from megatron_core.data.tokenizers import build_tokenizer
    tokenizer = build_tokenizer("BertWordPieceLowerCase",
                                vocab_file=os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt"))
    with open(os.path.join(DATA, "zh_news_200.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    with open(os.path.join(DATA, "zh_news_200.segmented.txt"), encoding="utf-8") as f:
        gold = [line.rstrip("\n").split("\t") for line in f]
    assert len(texts) == len(gold) == 200
    return tokenizer, texts, gold


def _spans(words):
    spans, offset = set(), 0
    for w in words:
        spans.add((offset, offset + len(w)))
        offset += len(w)
    return spans


def test_chinese_wwm_masks_whole_gold_words_far_more_often_than_token_masking():
    """Share of masked spans that are exactly one word of the human segmentation
    (compared by character offsets), jieba WWM vs. plain token masking."""
    tokenizer, texts, gold = _load_news()
    inv = tokenizer.inv_vocab
    random_ids = random_replacement_ids(inv)
    hits = {True: 0, False: 0}
    counts = {True: 0, False: 0}
    tp = fp = fn = 0
    b_tp = b_fp = b_fn = 0
    for k, (text, words) in enumerate(zip(texts, gold)):
        assert "".join(words) == text, f"line {k + 1}: segmentation does not match the text"
        gold_spans = _spans(words)
        jieba_spans = set(chinese_wwm.jieba_word_spans(text))
        tp, fp, fn = tp + len(gold_spans & jieba_spans), fp + len(jieba_spans - gold_spans), \
            fn + len(gold_spans - jieba_spans)
        gold_ends, jieba_ends = {e for _, e in gold_spans}, {e for _, e in jieba_spans}
        b_tp, b_fp, b_fn = b_tp + len(gold_ends & jieba_ends), b_fp + len(jieba_ends - gold_ends), \
            b_fn + len(gold_ends - jieba_ends)

        ids = tokenizer.tokenize(text)
        token_spans = chinese_wwm.align_tokens(text, [inv[i] for i in ids])
        flags = chinese_wwm.word_start_flags(text, ids, inv)
        for whole_word in (True, False):
            for rep in range(3):
                out = create_masked_lm_predictions(
                    ids, masked_lm_prob=0.15, max_predictions_per_seq=1000,
                    mask_id=tokenizer.mask, random_token_ids=random_ids,
                    never_mask={tokenizer.cls, tokenizer.sep}, np_rng=np.random.RandomState(k * 3 + rep),
                    word_starts=flags, whole_word=whole_word, max_ngrams=1)
                for span in out.spans:
                    chars = [token_spans[p] for p in span.positions]
                    if any(c is None for c in chars):  # [UNK]: no character offsets
                        continue
                    counts[whole_word] += 1
                    hits[whole_word] += (chars[0][0], chars[-1][1]) in gold_spans
    wwm, plain = hits[True] / counts[True], hits[False] / counts[False]
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    b_precision, b_recall = b_tp / (b_tp + b_fp), b_tp / (b_tp + b_fn)
    print(f"\nmasked spans that are whole gold words: jieba WWM {wwm:.3f} "
          f"({hits[True]}/{counts[True]}), plain token masking {plain:.3f} "
          f"({hits[False]}/{counts[False]})")
    print(f"jieba vs gold: word F1 {2 * precision * recall / (precision + recall):.3f} "
          f"(P {precision:.3f} R {recall:.3f}), boundary F1 "
          f"{2 * b_precision * b_recall / (b_precision + b_recall):.3f}")
    assert counts[True] > 1000 and counts[False] > 1000
    assert wwm > 0.75
    assert wwm > plain + 0.4
