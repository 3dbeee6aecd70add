#!/usr/bin/env python
"""Train a SentencePiece model on a JSON-lines (or plain text) corpus.

    python tools/train_tokenizer.py --input corpus.jsonl --model-prefix tok/zh \\
        --vocab-size 32000 --model-type bpe --character-coverage 0.9995

writes tok/zh.model and tok/zh.vocab; use them with
`--tokenizer-type SentencePieceTokenizer --tokenizer-model tok/zh.model`.
Texts are streamed to the trainer (no temporary text file); .jsonl / .jsonl.gz inputs
use --json-keys, any other file is read one text per line.
"""
import argparse
import io
import os
import re
import sys
import time
from collections import Counter

from megatron_core.cli import run
from megatron_core.atomic_files import create_temporary, naming, publish, remove_quietly
from megatron_core.data.preprocess_workers import checked_lines, open_input, parse_line
from megatron_core.errors import DataError

MAX_REPORTED = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help=".jsonl / .jsonl.gz, or a text file with one text per line")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys whose texts are used (default: text)")
    p.add_argument("--model-prefix", required=True, help="writes {prefix}.model and {prefix}.vocab")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters the vocab must cover (0.9995 for Chinese, 1.0 for small alphabets)")
    p.add_argument("--input-sentence-size", type=int, default=0,
                   help="train on a random sample of this many texts (0: all)")
    p.add_argument("--max-sentence-length", type=int, default=16384,
                   help="texts longer than this many bytes are skipped by the trainer")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


def is_json_lines(path: str) -> bool:
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith((".jsonl", ".json"))


class TextStream:
    """Yields the corpus' texts one by one and counts what it saw and skipped."""

    def __init__(self, path: str, json_keys, json_lines: bool):
        self.path, self.json_keys, self.json_lines = path, json_keys, json_lines
        self.lines = self.texts = self.chars = 0
        self.skipped = Counter()
        self.error = None

    def __iter__(self):
        lines, raw = open_input(self.path)
        try:
            for line_no, line in enumerate(checked_lines(lines, self.path, raw is not lines), start=1):
                self.lines += 1
                yield from self._texts_of(line, line_no)
        except DataError as e:
            # an exception raised inside sentencepiece's iterator comes out mangled:
            # stop the stream here and let train() raise it afterwards
            self.error = e
        finally:
            lines.close()
            raw.close()

    def _texts_of(self, line: bytes, line_no: int):
        if not line.strip():
            return
        if not self.json_lines:
            try:
                texts = [line.decode("utf-8").rstrip("\r\n")]
            except UnicodeDecodeError:
                texts, problem = None, ("invalid UTF-8", "not valid UTF-8")
        else:
            found, problem = parse_line(line, line_no, self.json_keys)
            texts = None if found is None else [
                t for v in found.values() for t in ([v] if isinstance(v, str) else v)]
        if texts is None:
            self.skipped[problem[0]] += 1
            if sum(self.skipped.values()) <= MAX_REPORTED:
                print(f"skipping {self.path}, line {line_no}: {problem[0]} ({problem[1]})", file=sys.stderr)
            return
        for text in texts:
            if text:
                self.texts += 1
                self.chars += len(text)
                yield text


def train(args) -> dict:
    import sentencepiece

    if not os.path.isfile(args.input):
        raise DataError(f"--input {args.input} does not exist; pass a .jsonl, .jsonl.gz or text file.")
    out_dir = os.path.dirname(os.path.abspath(args.model_prefix))
    if not os.path.isdir(out_dir):
        raise DataError(f"--model-prefix {args.model_prefix}: directory {out_dir} does not exist; create it first.")
    stream = TextStream(args.input, args.json_keys, is_json_lines(args.input))
    start = time.perf_counter()
    outputs = [args.model_prefix + ".model", args.model_prefix + ".vocab"]
    # Created before training, so a directory that cannot be written fails in a second,
    # not after an hour; removed on any failure, so no partial file is ever left.
    temporaries = []
    try:
        for path in outputs:
            temporaries.append(create_temporary(path))
        model = _train_model(sentencepiece, stream, args)
        _write_outputs(sentencepiece, model, temporaries, outputs)
    except BaseException:
        for f, tmp in temporaries:
            f.close()
            remove_quietly(tmp)
        raise
    return {"model": outputs[0], "vocab": outputs[1],
            "lines": stream.lines, "texts": stream.texts, "characters": stream.chars,
            "skipped": dict(stream.skipped), "vocab_size": args.vocab_size,
            "elapsed_s": round(time.perf_counter() - start, 2)}


def _write_outputs(sentencepiece, model: bytes, temporaries, outputs) -> None:
    """The .model as trained and the .vocab as sentencepiece writes it (piece, tab, score
    printed as C++ streams a float), each to its temporary, then both renamed."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                    for i in range(processor.get_piece_size()))
    for (f, tmp), path, data in zip(temporaries, outputs, (model, vocab.encode("utf-8"))):
        with naming(path), f:
            f.write(data)
    for (_, tmp), path in zip(temporaries, outputs):
        publish(tmp, path)


def _train_model(sentencepiece, stream: "TextStream", args) -> bytes:
    """The trained model's bytes. sentencepiece writes no file itself: given a full disk it
    leaves truncated ones and reports success."""
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(stream), model_writer=model,
            vocab_size=args.vocab_size, model_type=args.model_type,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=args.max_sentence_length, num_threads=args.threads,
            minloglevel=2)
    except RuntimeError as e:
        if stream.error is not None:
            raise stream.error from None
        message = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        limit = re.search(r"Vocabulary size too high.*<= ?(\d+)", message)
        if limit:
            raise DataError(f"--vocab-size {args.vocab_size} is too large for {args.input}; "
                            f"set it to at most {limit.group(1)}.") from None
        small = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
        if small:
            raise DataError(
                f"--vocab-size {args.vocab_size} is smaller than the {small.group(2)} characters "
                f"{args.input} needs at --character-coverage {args.character_coverage}; raise "
                f"--vocab-size or lower --character-coverage.") from None
        if stream.texts == 0:
            raise DataError(f"--input {args.input} has no usable text under --json-keys "
                            f"{' '.join(args.json_keys)}.") from None
        raise DataError(f"sentencepiece could not train on {args.input}: {message}") from None
    if stream.error is not None:  # trained on part of the input only: write no model
        raise stream.error
    return model.getvalue()


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = train(args)
    skipped = sum(summary["skipped"].values())
    print(f"trained a {args.model_type} model of {summary['vocab_size']} pieces on {summary['texts']} texts "
          f"({summary['characters']} characters, {summary['lines']} lines, {skipped} skipped) "
          f"in {summary['elapsed_s']} s -> {summary['model']}, {summary['vocab']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
