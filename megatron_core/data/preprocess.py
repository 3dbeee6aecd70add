"""JSON lines -> Megatron indexed datasets, streaming with a worker pool.

The main process reads the input lazily in batches of lines, workers decode, validate
and tokenize each batch (one `tokenize_batch` call, so the fast tokenizers run in Rust
over the whole batch) and send back flat numpy arrays, and the main process appends
them to one IndexedDatasetBuilder per JSON key in input order. At most a few batches
are in flight, so memory stays flat however large the input is. Outputs only appear
under their final names once everything succeeded.
"""
from __future__ import annotations

import gzip
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron_core.atomic_files import remove_quietly
from megatron_core.data.indexed_dataset import (
    IndexedDatasetBuilder,
    best_dtype,
    data_file_path,
    index_file_path,
)
from megatron_core.data.text_splitting import split_sentences
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import DataError

# Input is cut into batches of about this many bytes (or lines, whichever comes first):
# large enough that per-batch overhead (pickling, IPC) is small next to tokenizing.
BATCH_BYTES = 1 << 20
BATCH_LINES = 4096
MIN_TAIL_BATCH_BYTES = 32 << 10  # the smallest batch the end of the input is cut into
MAX_REPORTED = 10  # bad lines printed one by one; the rest are only counted


@dataclass
class PreprocessOptions:
    input: str
    output_prefix: str
    tokenizer_type: str
    json_keys: Sequence[str] = ("text",)
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    tokenizer_model: Optional[str] = None
    vocab_extra_ids: int = 0
    append_eod: bool = False
    split_sentences: bool = False
    workers: int = 1
    log_interval: int = 1000
    strict: bool = False
    batch_bytes: int = BATCH_BYTES
    batch_lines: int = BATCH_LINES

    def tokenizer_kwargs(self) -> dict:
        return dict(tokenizer_type=self.tokenizer_type, vocab_file=self.vocab_file,
                    merge_file=self.merge_file, tokenizer_model=self.tokenizer_model,
                    vocab_extra_ids=self.vocab_extra_ids)


def output_prefix_for(output_prefix: str, key: str, split: bool) -> str:
    """Megatron's naming: {prefix}_{key}_document, or _sentence with --split-sentences."""
    return f"{output_prefix}_{key}_{'sentence' if split else 'document'}"


# ---------------------------------------------------------------------------------------
# Reading


def open_input(path: str):
    """(line iterator over bytes, the underlying file for progress by position)."""
    if os.path.isdir(path):
        raise DataError(f"--input {path} is a directory; pass one .jsonl or .jsonl.gz file "
                        f"(preprocess each file, then join them with tools/merge_datasets.py).")
    if not os.path.isfile(path):
        raise DataError(f"--input {path} does not exist; pass a .jsonl or .jsonl.gz file.")
    raw = open(path, "rb")
    if raw.read(2) == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw), raw
    raw.seek(0)
    return raw, raw


def _checked_lines(lines, path: str, gz: bool) -> Iterator[bytes]:
    """The input's lines; a read error (a truncated .gz above all) becomes one DataError."""
    count = 0
    try:
        for line in lines:
            count += 1
            yield line
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if gz:
            raise DataError(
                f"--input {path} is a truncated or corrupt gzip file ({e}; it breaks off "
                f"after line {count}); re-create or re-download it (`gzip -t` checks it).") from None
        raise DataError(f"--input {path} could not be read after line {count} ({e}); check "
                        f"the file and the disk.") from None


def _batches(lines, batch_bytes: int, batch_lines: int, total_bytes: Optional[int] = None,
             workers: int = 1) -> Iterator[Tuple[int, List[bytes]]]:
    """(number of the first line, lines) in input order, read lazily.

    With `total_bytes` known (plain input), batches shrink near the end of the file so
    that the workers finish together instead of one of them tokenizing a last big batch
    while the others wait.
    """
    batch: List[bytes] = []
    size, first, consumed = 0, 1, 0
    target = batch_bytes

    def next_target() -> int:
        if not total_bytes or workers < 2:
            return batch_bytes
        left = total_bytes - consumed
        return max(MIN_TAIL_BATCH_BYTES, min(batch_bytes, left // (2 * workers)))

    for line_no, line in enumerate(lines, start=1):
        if not batch:
            first = line_no
            target = next_target()
        batch.append(line)
        size += len(line)
        if size >= target or len(batch) >= batch_lines:
            consumed += size
            yield first, batch
            batch, size = [], 0
    if batch:
        yield first, batch


# ---------------------------------------------------------------------------------------
# Work done per batch (in the workers)


@dataclass
class KeyResult:
    tokens: np.ndarray          # all tokens of the batch's documents, flat
    lengths: np.ndarray         # int32, one per sequence
    sequences_per_doc: np.ndarray  # int32, one per written document
    empty_documents: int = 0


@dataclass
class BatchResult:
    first_line: int
    num_lines: int
    num_bytes: int
    keys: Dict[str, KeyResult]
    documents: int = 0                       # lines that parsed and were used
    blank_lines: int = 0
    bad: List[Tuple[int, str, str]] = field(default_factory=list)  # (line, reason, detail)


_worker: dict = {}


def init_worker(options: PreprocessOptions) -> None:
    """Pool initializer: each worker builds its own tokenizer once."""
    tokenizer = build_tokenizer(**options.tokenizer_kwargs())
    _worker["tokenizer"] = tokenizer
    _worker["options"] = options
    _worker["dtype"] = best_dtype(tokenizer.vocab_size)


def init_pool_worker(options: PreprocessOptions) -> None:
    """Initializer of the worker processes (see _after_fork_in_child for their signals)."""
    init_worker(options)


_fork_hook = {"installed": False, "active": False}


def _after_fork_in_child() -> None:
    """Runs in every process forked while a preprocess() pool is alive, right after the
    fork, before anything can block: the main process may turn SIGTERM into an exception
    (tools/preprocess_data.py does, to clean up), but a worker must simply die on it, as
    Pool.terminate expects; and a worker must never outlive the main process (Pool
    replaces workers killed by a signal to the whole process group, and such a late
    replacement could otherwise miss Pool.terminate)."""
    if not _fork_hook["active"]:
        return
    _fork_hook["active"] = False  # processes the worker forks in turn are not ours
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


def _install_fork_hook() -> None:
    if _fork_hook["installed"] or not hasattr(os, "register_at_fork"):
        return
    if sys.platform.startswith("linux"):
        try:  # looked up here: a child right after fork must not import anything
            import ctypes

            _fork_hook["prctl"] = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass
    os.register_at_fork(after_in_child=_after_fork_in_child)
    _fork_hook["installed"] = True


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the main process dies, however it dies."""
    prctl = _fork_hook.get("prctl")
    if prctl is None:
        return
    PR_SET_PDEATHSIG = 1
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if _worker.get("main_pid") not in (None, os.getppid()):
        os._exit(1)  # the main process died before the prctl took effect


def parse_line(raw: bytes, line_no: int, keys: Sequence[str]):
    """The per-key list of texts of one line, or (reason, detail) if the line is bad."""
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as e:
        return None, ("invalid UTF-8", f"byte {e.start} is not valid UTF-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, ("invalid JSON", e.msg + f" at column {e.colno}")
    if not isinstance(obj, dict):
        return None, ("not a JSON object", f"found a JSON {type(obj).__name__}")
    texts = {}
    for key in keys:
        if key not in obj:
            return None, ("missing key", f"no key {key!r} (keys: {', '.join(map(repr, list(obj)[:5]))})")
        value = obj[key]
        # Megatron also accepts a list of already-split sentences.
        if isinstance(value, str):
            texts[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            texts[key] = value
        else:
            return None, ("non-string value", f"{key!r} is a JSON {type(value).__name__}, not a string")
    return texts, None


def encode_batch(batch: Tuple[int, List[bytes]]) -> BatchResult:
    first_line, lines = batch
    tokenizer = _worker["tokenizer"]
    options: PreprocessOptions = _worker["options"]
    keys = list(options.json_keys)
    result = BatchResult(first_line, len(lines), sum(map(len, lines)), {})

    # 1. parse; collect every text to tokenize, remembering which doc/key it belongs to
    sentences: List[str] = []
    doc_spans: Dict[str, List[Tuple[int, int]]] = {k: [] for k in keys}  # [start, end) in sentences
    for offset, raw in enumerate(lines):
        if not raw.strip():
            result.blank_lines += 1
            continue
        texts, problem = parse_line(raw, first_line + offset, keys)
        if problem:
            result.bad.append((first_line + offset, *problem))
            continue
        result.documents += 1
        for key in keys:
            value = texts[key]
            if isinstance(value, str):
                parts = split_sentences(value) if options.split_sentences else [value]
            else:
                parts = value
            doc_spans[key].append((len(sentences), len(sentences) + len(parts)))
            sentences.extend(parts)

    # 2. tokenize everything in one call
    ids = tokenizer.tokenize_batch(sentences) if sentences else []

    # 3. assemble flat arrays per key; empty sentences vanish, empty documents are skipped
    eod = [tokenizer.eod] if options.append_eod else None
    for key in keys:
        pieces: List[List[int]] = []
        lengths: List[int] = []
        per_doc: List[int] = []
        empty = 0
        for start, end in doc_spans[key]:
            doc_lengths = [len(ids[i]) for i in range(start, end) if ids[i]]
            if not doc_lengths:
                empty += 1
                continue
            pieces.extend(ids[i] for i in range(start, end) if ids[i])
            if eod:
                pieces.append(eod)
                doc_lengths[-1] += 1
            lengths.extend(doc_lengths)
            per_doc.append(len(doc_lengths))
        total = sum(lengths)
        tokens = np.fromiter(itertools.chain.from_iterable(pieces), dtype=_worker["dtype"], count=total)
        result.keys[key] = KeyResult(tokens, np.asarray(lengths, np.int32),
                                     np.asarray(per_doc, np.int32), empty)
    return result


# ---------------------------------------------------------------------------------------
# Driving


@dataclass
class PreprocessSummary:
    input: str
    outputs: Dict[str, str]                   # key -> dataset prefix
    lines: int = 0
    input_bytes: int = 0
    documents: Dict[str, int] = field(default_factory=dict)       # written, per key
    empty_documents: Dict[str, int] = field(default_factory=dict)
    sequences: Dict[str, int] = field(default_factory=dict)
    tokens: Dict[str, int] = field(default_factory=dict)
    output_bytes: int = 0
    blank_lines: int = 0
    skipped: Counter = field(default_factory=Counter)             # reason -> lines
    first_bad: List[Tuple[int, str, str]] = field(default_factory=list)
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["skipped"] = dict(self.skipped)
        return d


class _Progress:
    """Prints a progress line every `interval` documents: rate, throughput, ETA."""

    def __init__(self, interval: int, total_bytes: int, position, stream=sys.stderr):
        self.interval, self.total, self.position, self.stream = interval, total_bytes, position, stream
        self.start = time.perf_counter()
        self.next_report = interval

    def update(self, documents: int, tokens: int) -> None:
        if self.interval <= 0 or documents < self.next_report:
            return
        self.next_report = (documents // self.interval + 1) * self.interval
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        done = self.position()
        line = (f"processed {documents} documents, {tokens} tokens "
                f"({documents / elapsed:.0f} docs/s, {tokens / elapsed:.0f} tokens/s, "
                f"{done / elapsed / 1e6:.2f} MB/s")
        if self.total and done:
            fraction = min(done / self.total, 1.0)
            eta = elapsed * (1 - fraction) / max(fraction, 1e-9)
            line += f", {100 * fraction:.0f}% of input, ETA {eta:.0f} s"
        print(line + ")", file=self.stream, flush=True)


class _Throttle:
    """Lets at most `slots` batches be in flight.

    Pool.imap pulls its input from a feeder thread as fast as it can, so without this
    it would read the whole file ahead into memory whenever workers are slower than
    reading. `stop` ends the feeding early (on error) so the pool can shut down.
    """

    def __init__(self, slots: int):
        self._slots = threading.Semaphore(slots)
        self._stopped = False

    def feed(self, iterable):
        for item in iterable:
            self._slots.acquire()
            if self._stopped:
                return
            yield item

    def release(self) -> None:
        self._slots.release()

    def stop(self) -> None:
        self._stopped = True
        self._slots.release()


def _stop_pool(pool, timeout: float = 5.0) -> None:
    """Stop the workers at once, without risking a hang.

    A worker killed by a signal sent to the whole process group (Ctrl-C, `kill -TERM
    -pgid`) may die holding the task queue's lock, and Pool.terminate then waits for
    that lock forever. So the workers are SIGKILLed directly, and terminate() (which
    also stops the pool's threads) gets a bounded time in a helper thread.
    """
    for worker in list(getattr(pool, "_pool", [])):
        try:
            worker.kill()
        except (OSError, AttributeError, ValueError):
            pass
    stopper = threading.Thread(target=pool.terminate, daemon=True)
    stopper.start()
    stopper.join(timeout)


def _check_bad_lines(result: BatchResult, summary: PreprocessSummary, options, report) -> None:
    for line_no, reason, detail in result.bad:
        if options.strict:
            raise DataError(
                f"{options.input}, line {line_no}: {reason} ({detail}); fix or remove the "
                f"line, or drop --strict to skip bad lines.")
        summary.skipped[reason] += 1
        if len(summary.first_bad) < MAX_REPORTED:
            summary.first_bad.append((line_no, reason, detail))
            report(f"skipping {options.input}, line {line_no}: {reason} ({detail})")
        elif sum(summary.skipped.values()) == MAX_REPORTED + 1:
            report("further bad lines are counted but not shown")


def preprocess(options: PreprocessOptions, log=None) -> PreprocessSummary:
    """Run the whole conversion; raises DataError for user mistakes (nothing is left behind)."""
    report = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if options.workers < 1:
        raise DataError(f"--workers {options.workers} must be at least 1.")
    if options.batch_lines < 1:
        raise DataError(f"--batch-lines {options.batch_lines} must be at least 1.")
    if not options.json_keys:
        raise DataError("--json-keys needs at least one key, e.g. --json-keys text.")
    repeated = sorted({k for k in options.json_keys if list(options.json_keys).count(k) > 1})
    if repeated:
        raise DataError(f"--json-keys names {', '.join(repeated)} more than once; give each key once.")
    out_dir = os.path.dirname(os.path.abspath(options.output_prefix))
    if not os.path.isdir(out_dir):
        raise DataError(f"--output-prefix {options.output_prefix}: directory {out_dir} "
                        f"does not exist; create it first.")
    start = time.perf_counter()
    tokenizer = build_tokenizer(**options.tokenizer_kwargs())  # fail fast on bad flags
    if options.append_eod and tokenizer.eod is None:
        raise DataError(f"--append-eod: tokenizer {options.tokenizer_type} has no "
                        f"end-of-document token; drop --append-eod or use another tokenizer.")
    dtype = best_dtype(tokenizer.vocab_size)
    lines, raw = open_input(options.input)
    prefixes = {k: output_prefix_for(options.output_prefix, k, options.split_sentences)
                for k in options.json_keys}
    summary = PreprocessSummary(options.input, prefixes)
    for table in (summary.documents, summary.empty_documents, summary.sequences, summary.tokens):
        table.update({k: 0 for k in options.json_keys})
    total_bytes = os.path.getsize(options.input)
    gz = raw is not lines
    progress = _Progress(options.log_interval, total_bytes,
                         (lambda: raw.tell()) if gz else (lambda: summary.input_bytes))

    builders: Dict[str, IndexedDatasetBuilder] = {}
    published: List[str] = []
    pool = throttle = None
    try:
        for key, prefix in prefixes.items():
            builders[key] = IndexedDatasetBuilder(data_file_path(prefix), dtype=dtype)
        batches = _batches(_checked_lines(lines, options.input, gz), options.batch_bytes, options.batch_lines,
                           None if gz else total_bytes, options.workers)
        if options.workers == 1:
            init_worker(options)
            results = map(encode_batch, batches)
        else:
            throttle = _Throttle(2 * options.workers + 2)
            _worker["main_pid"] = os.getpid()  # inherited by the forked workers
            _install_fork_hook()
            _fork_hook["active"] = True
            pool = multiprocessing.Pool(options.workers, initializer=init_pool_worker,
                                        initargs=(options,))
            results = pool.imap(encode_batch, throttle.feed(batches), chunksize=1)

        for result in results:
            if throttle is not None:
                throttle.release()
            _check_bad_lines(result, summary, options, report)
            summary.lines += result.num_lines
            summary.input_bytes += result.num_bytes
            summary.blank_lines += result.blank_lines
            for key, part in result.keys.items():
                builders[key].add_documents(part.tokens, part.lengths, part.sequences_per_doc)
                summary.documents[key] += len(part.sequences_per_doc)
                summary.empty_documents[key] += part.empty_documents
                summary.sequences[key] += len(part.lengths)
                summary.tokens[key] += part.tokens.size
            first_key = options.json_keys[0]
            progress.update(summary.documents[first_key], summary.tokens[first_key])

        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        if sum(summary.documents.values()) == 0:
            first = (f" (first: line {summary.first_bad[0][0]}, {summary.first_bad[0][1]})"
                     if summary.first_bad else "")
            raise DataError(
                f"--input {options.input} produced no documents: {summary.lines} lines read, "
                f"{sum(summary.skipped.values())} skipped{first}; each line must be a JSON "
                f"object with a non-empty string under --json-keys "
                f"{' '.join(options.json_keys)}.")
        for key, prefix in prefixes.items():
            builders[key].finalize(index_file_path(prefix))
            published.append(prefix)
            summary.output_bytes += (os.path.getsize(data_file_path(prefix))
                                     + os.path.getsize(index_file_path(prefix)))
    except BaseException:
        # Files first: whatever happens while stopping the workers, nothing is left behind,
        # not even the datasets of the keys finished before the one that failed.
        for builder in builders.values():
            builder.abort()
        for prefix in published:
            for path in (index_file_path(prefix), data_file_path(prefix)):
                remove_quietly(path)
        if pool is not None:
            throttle.stop()
            _stop_pool(pool)
        raise
    finally:
        _fork_hook["active"] = False
        lines.close()
        raw.close()
    summary.elapsed = time.perf_counter() - start
    return summary


def format_summary(summary: PreprocessSummary) -> str:
    """A few human-readable lines for the end of a run."""
    out = [f"done in {summary.elapsed:.1f} s: read {summary.lines} lines "
           f"({summary.input_bytes / 1e6:.1f} MB, {summary.input_bytes / 1e6 / max(summary.elapsed, 1e-9):.2f} MB/s), "
           f"wrote {summary.output_bytes / 1e6:.1f} MB"]
    for key, prefix in summary.outputs.items():
        out.append(
            f"  {key}: {summary.documents[key]} documents, {summary.sequences[key]} sequences, "
            f"{summary.tokens[key]} tokens -> {prefix}.bin/.idx"
            + (f"; {summary.empty_documents[key]} empty documents skipped"
               if summary.empty_documents[key] else ""))
    skipped = sum(summary.skipped.values())
    if skipped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in summary.skipped.most_common())
        out.append(f"  skipped {skipped} bad lines ({reasons})")
    if summary.blank_lines:
        out.append(f"  ignored {summary.blank_lines} blank lines")
    return "\n".join(out)
