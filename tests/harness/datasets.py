"""Small indexed datasets written for tests: random documents, and the bundled news as sentences."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import torch

from megatron_core.data.indexed_dataset import IndexedDatasetBuilder
from megatron_core.data.tokenizers import build_tokenizer

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
EOD = 0
PARAGRAPHS_PER_DOCUMENT = 4


def write_random_dataset(prefix, num_docs=60, max_len=50, seed=0, vocab=30000):
    """Documents of 1..max_len random tokens, each ending in EOD; returns the token lists."""
    rng = np.random.default_rng(seed)
    docs = []
    builder = IndexedDatasetBuilder(prefix + ".bin", np.uint16)
    for _ in range(num_docs):
        length = int(rng.integers(1, max_len + 1))
        tokens = np.append(rng.integers(1, vocab, length - 1), EOD).astype(np.uint16)
        builder.add_item(tokens)
        builder.end_document()
        docs.append(tokens.astype(np.int64))
    builder.finalize(prefix + ".idx")
    return docs


def write_null_tokenizer_corpus(prefix, vocab=127, documents=64, seed=0):
    """Documents of 20..59 token ids below `vocab`, each ended by NullTokenizer's end-of-document
    id (`vocab` itself): data for --tokenizer-type NullTokenizer --vocab-size `vocab`."""
    generator = torch.Generator().manual_seed(seed)
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32) as builder:
        for _ in range(documents):
            length = int(torch.randint(20, 60, (1,), generator=generator))
            builder.add_item(torch.cat([torch.randint(0, vocab, (length,), generator=generator),
                                        torch.tensor([vocab])]).numpy())
            builder.end_document()
        builder.finalize(prefix + ".idx")


def null_tokenizer_run_flags(load, directory) -> list:
    """pretrain_gpt.py flags that train a Megatron-LM checkpoint's model (`--load`, its model flags from
    its args) on write_null_tokenizer_corpus's data in `directory` at TP=1: micro and global batch 2,
    a log line every iteration, no validation, and the schedule megatron_lm_optimizer.build_optimizer
    saved (lr 1e-3 decaying linearly over 100 iterations), so a resume agrees with the checkpoint's.
    Add --train-iters (and --finetune)."""
    prefix = os.path.join(str(directory), "synthetic_text_document")
    if not os.path.exists(prefix + ".idx"):
        write_null_tokenizer_corpus(prefix)
    flags = ["--load", load, "--use-checkpoint-args", "--tokenizer-type", "NullTokenizer", "--vocab-size", 127,
             "--data-path", prefix, "--data-cache-path", os.path.join(str(directory), "cache"), "--split", "90,10,0",
             "--num-workers", 0, "--micro-batch-size", 2, "--global-batch-size", 2, "--lr", 1e-3,
             "--lr-decay-style", "linear", "--lr-decay-iters", 100, "--log-interval", 1, "--eval-iters", 0,
             "--tensor-model-parallel-size", 1]
    return [str(flag) for flag in flags]


def bert_chinese_tokenizer(vocab_extra_ids=0):
    return build_tokenizer("BertWordPieceLowerCase", vocab_extra_ids=vocab_extra_ids,
                           vocab_file=os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt"))


def write_zh_sentence_dataset(directory, tokenizer):
    """zh_news_200 as a --split-sentences dataset: a sentence ends after 。！？, and every
    4 paragraphs make one document. Returns (prefix, documents as lists of sentence
    texts, documents as lists of token-id lists)."""
    with open(os.path.join(DATA, "zh_news_200.jsonl"), encoding="utf-8") as f:
        paragraphs = [json.loads(line)["text"] for line in f]
    docs_text = []
    for d in range(0, len(paragraphs), PARAGRAPHS_PER_DOCUMENT):
        sentences = []
        for paragraph in paragraphs[d:d + PARAGRAPHS_PER_DOCUMENT]:
            sentences += [s for s in re.split(r"(?<=[。！？])", paragraph) if s.strip()]
        docs_text.append(sentences)
    prefix = os.path.join(str(directory), "zh_news_sentences")
    docs_ids = []
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for sentences in docs_text:
        ids = [tokenizer.tokenize(s) for s in sentences]
        for sentence in ids:
            builder.add_item(sentence)
        builder.end_document()
        docs_ids.append(ids)
    builder.finalize(prefix + ".idx")
    return prefix, docs_text, docs_ids
