"""Chinese whole-word masking checked against the human segmentation of zh_news.

The bounds below were measured (zh_news_200, seeds 0/1000/5000: whole-word share
0.854-0.882, n-gram clean share 0.940-0.964, token masking 0.245-0.266) and set a few
points under the lowest value; the whole 1998 corpus is measured by bench/wwm_gold.py.
"""
import json
import os

import pytest

from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.data.wwm_eval import check_alignment, measure_wwm, read_gold

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
SHARED = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data")


def read_texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_segmentation_is_aligned_line_for_line():
    texts = read_texts(os.path.join(DATA, "zh_news_200.jsonl"))
    gold = read_gold(os.path.join(DATA, "zh_news_200.segmented.txt"))
    check_alignment(texts, gold)  # raises naming the line if not
    with pytest.raises(ValueError, match="line 2: "):
        check_alignment(texts[:1] + texts[2:3] + texts[2:], gold)
    with pytest.raises(ValueError, match="200 lines"):
        check_alignment(texts[:-1], gold)


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "zh_news_1998.jsonl")),
                    reason="full corpus not present (it lives outside the repository)")
def test_full_corpus_is_aligned_line_for_line():
    check_alignment(read_texts(os.path.join(SHARED, "zh_news_1998.jsonl")),
                    read_gold(os.path.join(SHARED, "zh_news_1998.segmented.txt")))


def test_masked_spans_are_whole_gold_words():
    tokenizer = build_tokenizer("BertWordPieceLowerCase",
                                vocab_file=os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt"))
    texts = read_texts(os.path.join(DATA, "zh_news_200.jsonl"))
    gold = read_gold(os.path.join(DATA, "zh_news_200.segmented.txt"))
    m = measure_wwm(texts, gold, tokenizer, seed=0)
    print(f"\nzh_news_200: {m['whole_word_share']:.3f} of {m['masked_spans_wwm']} masked WWM spans "
          f"are exactly one gold word (token masking: {m['whole_word_share_token_masking']:.3f}); "
          f"with 1-3 word n-grams {m['ngram_clean_share']:.3f} cut no gold word "
          f"(token masking: {m['ngram_clean_share_token_masking']:.3f}); jieba word F1 "
          f"{m['jieba_word_f1']:.3f}")
    assert m["masked_spans_wwm"] > 1000 and m["masked_spans_wwm_ngram3"] > 800
    assert m["unaligned_spans_left_out"] < 0.1 * m["masked_spans_wwm"]
    assert m["whole_word_share"] >= 0.80
    assert m["whole_word_share"] >= m["whole_word_share_token_masking"] + 0.4
    assert m["ngram_clean_share"] >= 0.90
    assert m["ngram_clean_share"] >= m["ngram_clean_share_token_masking"] + 0.4
    assert 0.75 <= m["jieba_word_f1"] <= 0.9
