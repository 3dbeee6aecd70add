"""Small real datasets for data tests: tests/data's Chinese news slice through tools/preprocess_data.py.

    prefix = preprocess_zh_news(tmp_dir)                        # <tmp>/zh_text_document, with EOD
    prefix = preprocess_zh_news(tmp_dir, split_sentences=True)  # <tmp>/zh_text_sentence, 4 paragraphs a document
    vocab = write_gbk_vocab(tmp_dir)                            # a vocab.txt that is not UTF-8
    vocab = write_small_vocab(tmp_dir, 128)                     # the slice's commonest characters
    prefix = preprocess_zh_news(tmp_dir, vocab_file=vocab)      # ids below 128

The tool runs as a user runs it (a subprocess), so the tests read what users' data looks like.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_DATA = os.path.join(ROOT, "tests", "data")
BERT_VOCAB = os.path.join(TEST_DATA, "vocab", "bert-base-chinese-vocab.txt")
ZH_NEWS = os.path.join(TEST_DATA, "zh_news_200.jsonl")
FINETUNE_JSONL = os.path.join(TEST_DATA, "finetune_small.jsonl")

# Where the first byte that is not UTF-8 sits in write_gbk_vocab's file: 清 in GBK is c7 e5.
GBK_VOCAB_BAD_BYTE = "byte 0xc7 at offset 31"


def write_gbk_vocab(directory: str) -> str:
    """A Chinese WordPiece vocabulary saved as GBK (as Windows editors save it) where UTF-8 is
    expected; returns its path."""
    path = os.path.join(str(directory), "vocab-gbk.txt")
    with open(path, "wb") as f:
        f.write("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n清华\n".encode("gbk"))
    return path


def write_small_vocab(directory: str, size: int) -> str:
    """A WordPiece vocabulary of exactly `size` ids (BertWordPieceLowerCase's vocab_size): the
    special tokens ([BOS] and [EOS] included, so none are appended) and the commonest characters
    of the news slice; the rest of the text reads as [UNK]. Returns its path."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"]
    counts = {}
    with open(ZH_NEWS, encoding="utf-8") as f:
        for line in f:
            for char in json.loads(line)["text"].lower():
                if not char.isspace():
                    counts[char] = counts.get(char, 0) + 1
    common = sorted(counts, key=lambda c: (-counts[c], c))[:size - len(special)]
    path = os.path.join(str(directory), f"vocab-{size}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(special + common) + "\n")
    return path


def _write_lines(path: str, first: int, stop: int, per_document: int) -> None:
    """Lines [first, stop) of the news slice, `per_document` paragraphs joined into one document."""
    with open(ZH_NEWS, encoding="utf-8") as f:
        paragraphs = [json.loads(line)["text"] for line in f][first:stop]
    with open(path, "w", encoding="utf-8") as f:
        for d in range(0, len(paragraphs), per_document):
            f.write(json.dumps({"text": "".join(paragraphs[d:d + per_document])}, ensure_ascii=False) + "\n")


def preprocess_zh_news(directory: str, split_sentences: bool = False, name: str = "zh", first: int = 0,
                       stop: Optional[int] = None, vocab_file: str = BERT_VOCAB) -> str:
    """Run tools/preprocess_data.py (BertWordPieceLowerCase, `vocab_file`) on paragraphs [first, stop);
    returns the prefix."""
    os.makedirs(directory, exist_ok=True)
    source = os.path.join(directory, f"{name}.jsonl")
    _write_lines(source, first, 200 if stop is None else stop, 4 if split_sentences else 1)
    command = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", source,
               "--output-prefix", os.path.join(directory, name), "--tokenizer-type", "BertWordPieceLowerCase",
               "--vocab-file", vocab_file]
    command += ["--split-sentences"] if split_sentences else ["--append-eod"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return os.path.join(directory, f"{name}_text_{'sentence' if split_sentences else 'document'}")
