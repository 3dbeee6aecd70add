#!/usr/bin/env python
"""Tokenize a JSON-lines corpus into Megatron indexed datasets (.bin/.idx).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/zh \\
        --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt --workers 8 --append-eod

writes data/zh_text_document.bin/.idx (data/zh_text_sentence.* with --split-sentences).
"""
import argparse
import signal
import sys

from megatron_core.cli import exit_now, run
from megatron_core.data.preprocess import (
    BATCH_BYTES, BATCH_LINES, PreprocessOptions, format_summary, preprocess)
from megatron_core.data.tokenizers import TOKENIZER_TYPES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--input", required=True, help="JSON lines file (.jsonl, or gzip-compressed .jsonl.gz)")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to extract from each line; one dataset per key (default: text)")
    g.add_argument("--split-sentences", action="store_true",
                   help="one sequence per sentence (Chinese 。！？；… and English .!?); "
                        "output is named {prefix}_{key}_sentence")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first bad line instead of skipping and counting it")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--vocab-file", help="WordPiece vocab.txt or GPT-2 vocab.json")
    g.add_argument("--merge-file", help="GPT-2 merges.txt")
    g.add_argument("--tokenizer-model", help="SentencePiece .model, or tokenizer.json / its directory")
    g.add_argument("--vocab-extra-ids", type=int, default=0, help="T5 sentinel tokens to add")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document token to each document")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True,
                   help="writes {prefix}_{key}_document.bin/.idx")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    g.add_argument("--batch-lines", type=int, default=BATCH_LINES,
                   help=f"most lines per unit of work handed to a worker (default {BATCH_LINES}; "
                        f"a unit also ends after {BATCH_BYTES >> 20} MiB)")
    g.add_argument("--log-interval", type=int, default=1000,
                   help="print progress every this many documents (0: never)")
    return p.parse_args(argv)


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException so that it unwinds like KeyboardInterrupt."""


def _terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated()


def _exit_now(message: str, code: int) -> None:
    """Exit without the interpreter's exit handlers: after an interrupt, multiprocessing's
    handler could wait on a worker that died holding a queue lock. The outputs' temporary
    files are already removed at this point."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    exit_now(code)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = PreprocessOptions(
        input=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
        json_keys=args.json_keys, vocab_file=args.vocab_file, merge_file=args.merge_file,
        tokenizer_model=args.tokenizer_model, vocab_extra_ids=args.vocab_extra_ids,
        append_eod=args.append_eod, split_sentences=args.split_sentences, workers=args.workers,
        log_interval=args.log_interval, strict=args.strict, batch_lines=args.batch_lines)
    # A scheduler's `kill` (SIGTERM) cleans up like Ctrl-C: temporaries removed, no output.
    signal.signal(signal.SIGTERM, _terminated)
    # A user mistake or an OS error (disk full, permission denied) propagates to cli.run:
    # one sentence and exit 2, after preprocess() removed the temporaries and stopped the
    # workers. Interrupts exit here, without the interpreter's exit handlers.
    try:
        summary = preprocess(options)
    except KeyboardInterrupt:
        _exit_now("interrupted; no output was written.", 130)
    except Terminated:
        _exit_now("terminated (SIGTERM); no output was written.", 128 + signal.SIGTERM)
    print(format_summary(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
