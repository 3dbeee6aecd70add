#!/usr/bin/env python
"""Chinese whole-word masking against the human segmentation of the whole corpus; prints JSON.

    python -m bench.wwm_gold [--corpus /work/shared/data/zh_news_1998.jsonl]
                             [--segmented /work/shared/data/zh_news_1998.segmented.txt]

Line i of the segmented file is line i of the corpus split into words by people (TABs).
Masking runs as BertDataset runs it with whole_word_masking="jieba" (flags from token ids,
15 % masking); see megatron_core/data/wwm_eval.py for what each number means.
"""
import argparse
import json
import os
import time

from megatron_core.cli import run
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.data.wwm_eval import measure_wwm, read_gold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "tests", "data", "vocab", "bert-base-chinese-vocab.txt")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="/work/shared/data/zh_news_1998.jsonl")
    p.add_argument("--segmented", default="/work/shared/data/zh_news_1998.segmented.txt")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=VOCAB)
    with open(args.corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    result = measure_wwm(texts, read_gold(args.segmented), tokenizer, seed=args.seed)
    print(json.dumps({"bench": "wwm_gold", "corpus": os.path.basename(args.corpus),
                      "segmenter": "jieba", "masked_lm_prob": 0.15, "seed": args.seed, **result,
                      "elapsed_s": round(time.perf_counter() - start, 1)}, indent=2))


if __name__ == "__main__":
    run(main)
