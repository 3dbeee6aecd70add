#!/usr/bin/env python
"""Tokenize a JSON-lines corpus into Megatron indexed datasets (.bin/.idx).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/zh \\
        --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt --workers 8 --append-eod

writes data/zh_text_document.bin/.idx (data/zh_text_sentence.* with --split-sentences).

An input of more than 256 MiB (or any, with --partitions N) is tokenized in partitions
recorded in data/zh.progress/: the same command after a kill goes on from there. With
--distributed, every rank that torchrun, `deepspeed --hostfile` or mpirun starts takes its
share of the partitions, and rank 0 merges them (docs/data.md).
"""
import argparse
import datetime
import os
import signal
import sys

from megatron_core.cli import exit_now, run
from megatron_core.data.partitions import PARTITION_BYTES
from megatron_core.data.preprocess import PreprocessOptions, format_summary, preprocess
from megatron_core.data.preprocess_progress import kept_partitions
from megatron_core.data.preprocess_team import GlooTeam, Team
from megatron_core.data.preprocess_workers import BATCH_BYTES, BATCH_LINES
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
    g.add_argument("--partitions", type=int, default=None,
                   help=f"tokenize the input in this many partitions (byte ranges starting at line starts), "
                        f"each recorded in {{prefix}}.progress/ when done, so that the same command after a kill "
                        f"goes on from there; merged in order at the end, byte-identical to one pass (default: "
                        f"one per {PARTITION_BYTES >> 20} MiB of input, at least one per rank)")
    g.add_argument("--distributed", action="store_true",
                   help="started by torchrun, deepspeed --hostfile or mpirun: each rank tokenizes its share of "
                        "the partitions and rank 0 merges them (--output-prefix on a file system every host "
                        "shares)")
    g.add_argument("--distributed-timeout-minutes", type=int, default=60,
                   help="with --distributed, how long a rank that is done waits for the others (default 60)")
    # DeepSpeed's launcher passes --local_rank; the rank comes from RANK (or OpenMPI's variables).
    g.add_argument("--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS)
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


def _stopped(how: str, output_prefix: str) -> str:
    kept = kept_partitions(output_prefix)
    if not kept:
        return f"{how}; no output was written."
    records, partitions, directory = kept
    return (f"{how}; no output was written, {records} of {partitions} partitions are kept in {directory} "
            f"(the same command goes on from there).")


def start_team(args) -> Team:
    """--distributed: the ranks the launcher started, joined over gloo (a world of one without a
    launcher). RANK / WORLD_SIZE are read as the training entry points read them: OpenMPI's
    OMPI_COMM_WORLD_* adopted, the whole launcher environment checked first."""
    if not args.distributed:
        return Team()
    from megatron_core.training.initialize import launcher_world_size

    world_size = launcher_world_size()
    if world_size == 1:
        return Team()
    return GlooTeam(int(os.environ["RANK"]), world_size,
                    datetime.timedelta(minutes=args.distributed_timeout_minutes))


def main(argv=None) -> int:
    args = parse_args(argv)
    options = PreprocessOptions(
        input=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
        json_keys=args.json_keys, vocab_file=args.vocab_file, merge_file=args.merge_file,
        tokenizer_model=args.tokenizer_model, vocab_extra_ids=args.vocab_extra_ids,
        append_eod=args.append_eod, split_sentences=args.split_sentences, workers=args.workers,
        log_interval=args.log_interval, strict=args.strict, batch_lines=args.batch_lines,
        partitions=args.partitions)
    # A scheduler's `kill` (SIGTERM) cleans up like Ctrl-C: temporaries removed, no output
    # (finished partitions stay for the next run).
    signal.signal(signal.SIGTERM, _terminated)
    # A user mistake or an OS error (disk full, permission denied) propagates to cli.run:
    # one sentence and exit 2, after preprocess() removed the temporaries and stopped the
    # workers. Interrupts exit here, without the interpreter's exit handlers.
    team = start_team(args)
    try:
        summary = preprocess(options, team=team)
    except KeyboardInterrupt:
        _exit_now(_stopped("interrupted", options.output_prefix), 130)
    except Terminated:
        _exit_now(_stopped("terminated (SIGTERM)", options.output_prefix), 128 + signal.SIGTERM)
    team.close()
    print(format_summary(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
