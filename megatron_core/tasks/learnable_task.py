"""A small task a model can learn, built from the bundled news corpus: is this sentence
as written (label "1") or its characters shuffled (label "0")?

Sentences are the corpus paragraphs cut after 。！？； and kept when 20 to 60 characters
long. Each chosen sentence gives both examples, its original and one shuffle of it, so
the classes are balanced and differ only in order; the train and dev sentences are
disjoint. The same seed writes the same files. Lines are {"text": ..., "label": "0"|"1"},
read with jsonl_task("text", "label").
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
from typing import List, Tuple

from megatron_core.atomic_files import write_atomically
from megatron_core.errors import ConfigError, DataError

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_CORPUS = os.path.join(_ROOT, "tests", "data", "zh_news_200.jsonl")
DEMO_CORPUS = os.path.join(_ROOT, "examples", "data", "zh_news_2000.jsonl.gz")     # gzip: read as it is
SENTENCE_END = re.compile(r"(?<=[。！？；])")
MIN_CHARS, MAX_CHARS = 20, 60


def corpus_sentences(corpus: str = BUNDLED_CORPUS) -> List[str]:
    """The distinct 20-60 character sentences of a {"text": ...} JSON-lines corpus, in order."""
    if not os.path.isfile(corpus):
        raise DataError(f"corpus {corpus} does not exist; pass the path of zh_news_200.jsonl.")
    sentences, seen = [], set()
    with (gzip.open(corpus, "rt", encoding="utf-8") if corpus.endswith(".gz") else open(corpus, encoding="utf-8")) as f:
        for line in f:
            if line.strip():
                for sentence in SENTENCE_END.split(json.loads(line)["text"]):
                    sentence = sentence.strip()
                    if MIN_CHARS <= len(sentence) <= MAX_CHARS and len(set(sentence)) > 1 and sentence not in seen:
                        seen.add(sentence)
                        sentences.append(sentence)
    return sentences


def shuffled(sentence: str, rng: random.Random) -> str:
    """The sentence's characters in another order (corpus_sentences keeps only sentences with one)."""
    chars = list(sentence)
    while True:
        rng.shuffle(chars)
        if "".join(chars) != sentence:
            return "".join(chars)


def _examples(sentences: List[str], rng: random.Random) -> List[dict]:
    rows = [row for s in sentences for row in ({"text": s, "label": "1"}, {"text": shuffled(s, rng), "label": "0"})]
    rng.shuffle(rows)
    return rows


def _write_jsonl(path: str, rows: List[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    write_atomically(path, lambda f, _tmp: f.write(text))


def write_shuffled_sentence_task(directory: str, n_train: int, n_dev: int, seed: int,
                                 corpus: str = BUNDLED_CORPUS) -> Tuple[str, str]:
    """Write train.jsonl (n_train lines) and dev.jsonl (n_dev lines) into `directory`;
    both counts even (half of each class). Returns their paths."""
    for name, count in (("n_train", n_train), ("n_dev", n_dev)):
        if count <= 0 or count % 2:
            raise ConfigError(f"{name} is {count}; give a positive even number (half of the "
                              f"examples are originals, half shuffles).")
    sentences = corpus_sentences(corpus)
    needed = (n_train + n_dev) // 2
    if needed > len(sentences):
        raise ConfigError(f"{corpus} has {len(sentences)} sentences of {MIN_CHARS}-{MAX_CHARS} "
                          f"characters, so n_train + n_dev can be at most {2 * len(sentences)}, "
                          f"not {n_train + n_dev}.")
    rng = random.Random(seed)
    chosen = rng.sample(sentences, needed)
    os.makedirs(directory, exist_ok=True)
    train_path, dev_path = os.path.join(directory, "train.jsonl"), os.path.join(directory, "dev.jsonl")
    _write_jsonl(train_path, _examples(chosen[:n_train // 2], rng))
    _write_jsonl(dev_path, _examples(chosen[n_train // 2:], rng))
    return train_path, dev_path


def main(argv=None) -> None:
    """python -m megatron_core.tasks.learnable_task --output DIR [--train N --dev N --seed S --corpus F]"""
    import argparse

    parser = argparse.ArgumentParser(description="write the shuffled-sentence task (train.jsonl, dev.jsonl)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--dev", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", default=DEMO_CORPUS)
    args = parser.parse_args(argv)
    for path in write_shuffled_sentence_task(args.output, args.train, args.dev, args.seed, args.corpus):
        print(f"wrote {path}")


if __name__ == "__main__":
    from megatron_core.cli import run

    run(main)
