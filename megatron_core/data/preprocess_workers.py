"""JSON lines in, token arrays out: the input read in batches, tokenized by a worker pool.

The main process reads the input lazily in batches of lines, workers decode, validate
and tokenize each batch (one `tokenize_batch` call, so the fast tokenizers run in Rust
over the whole batch) and send back flat numpy arrays, in input order. At most a few
batches are in flight, so memory stays flat however large the input is.

The input is read as a list of units (the whole file, or the partitions of it that this
process tokenizes); a batch never spans two units, and each unit's last batch says so,
so the caller can close the unit's datasets the moment its last tokens arrive.
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
import zlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron_core.data.indexed_dataset import best_dtype
from megatron_core.data.text_splitting import split_sentences
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import DataError

# Input is cut into batches of about this many bytes (or lines, whichever comes first):
# large enough that per-batch overhead (pickling, IPC) is small next to tokenizing.
BATCH_BYTES = 1 << 20
BATCH_LINES = 4096
MIN_TAIL_BATCH_BYTES = 32 << 10  # the smallest batch the end of the input is cut into


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


def lines_in_range(f, start: int, end: int) -> Iterator[bytes]:
    """The lines of bytes [start, end) of the open binary file `f` (both ends at line starts)."""
    f.seek(start)
    left = end - start
    while left > 0:
        line = f.readline()
        if not line:
            return
        left -= len(line)
        yield line


def checked_lines(lines, path: str, gz: bool) -> Iterator[bytes]:
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


@dataclass
class Batch:
    unit: int                  # which unit of the run's list it belongs to
    first_line: int            # number of its first line within the unit, from 1
    lines: List[bytes]
    file_start: bool = False   # the unit starts at byte 0, so its line 1 may open with a BOM
    last: bool = False         # the unit's last batch (a unit without lines has one empty batch)


def batches(units: Iterable[Tuple[Iterable[bytes], bool]], batch_bytes: int, batch_lines: int,
            total_bytes: Optional[int] = None, workers: int = 1) -> Iterator[Batch]:
    """The batches of each (lines, starts the file) unit in order, read lazily.

    With `total_bytes` known (plain input), batches shrink near the end of the input so
    that the workers finish together instead of one of them tokenizing a last big batch
    while the others wait.
    """
    consumed = 0

    def next_target() -> int:
        if not total_bytes or workers < 2:
            return batch_bytes
        left = total_bytes - consumed
        return max(MIN_TAIL_BATCH_BYTES, min(batch_bytes, left // (2 * workers)))

    for unit, (lines, file_start) in enumerate(units):
        held: Optional[Batch] = None      # one batch is held back until we know whether it is the last
        batch: List[bytes] = []
        size, first, target = 0, 1, batch_bytes
        for line_no, line in enumerate(lines, start=1):
            if not batch:
                first = line_no
                target = next_target()
            batch.append(line)
            size += len(line)
            if size >= target or len(batch) >= batch_lines:
                consumed += size
                if held is not None:
                    yield held
                held = Batch(unit, first, batch, file_start)
                batch, size = [], 0
        if batch:
            consumed += size
            if held is not None:
                yield held
            held = Batch(unit, first, batch, file_start)
        if held is None:
            held = Batch(unit, 1, [], file_start)
        held.last = True
        yield held


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
    unit: int
    first_line: int             # within the unit, as in Batch
    last: bool
    num_lines: int
    num_bytes: int
    keys: Dict[str, KeyResult]
    documents: int = 0                       # lines that parsed and were used
    blank_lines: int = 0
    bad: List[Tuple[int, str, str]] = field(default_factory=list)  # (line in unit, reason, detail)


_worker: dict = {}


def init_worker(options) -> None:
    """Pool initializer: each worker builds its own tokenizer once (`options`: PreprocessOptions)."""
    tokenizer = build_tokenizer(**options.tokenizer_kwargs())
    _worker["tokenizer"] = tokenizer
    _worker["options"] = options
    _worker["dtype"] = best_dtype(tokenizer.vocab_size)


def init_pool_worker(options) -> None:
    """Initializer of the worker processes (see _after_fork_in_child for their signals)."""
    init_worker(options)


_fork_hook = {"installed": False, "active": False}


def _after_fork_in_child() -> None:
    """Runs in every process forked while a Workers pool is alive, right after the
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


def parse_line(raw: bytes, line_no: int, keys: Sequence[str], file_start: bool = True):
    """The per-key list of texts of one line, or (reason, detail) if the line is bad. Line 1
    of the file (`line_no` 1 of a unit at the file's start) may open with a UTF-8 BOM."""
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 and file_start else "utf-8")
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


def encode_batch(batch: Batch) -> BatchResult:
    first_line, lines = batch.first_line, batch.lines
    tokenizer = _worker["tokenizer"]
    options = _worker["options"]
    keys = list(options.json_keys)
    result = BatchResult(batch.unit, first_line, batch.last, len(lines), sum(map(len, lines)), {})

    # 1. parse; collect every text to tokenize, remembering which doc/key it belongs to
    sentences: List[str] = []
    doc_spans: Dict[str, List[Tuple[int, int]]] = {k: [] for k in keys}  # [start, end) in sentences
    for offset, raw in enumerate(lines):
        if not raw.strip():
            result.blank_lines += 1
            continue
        texts, problem = parse_line(raw, first_line + offset, keys, batch.file_start)
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
# The pool


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


class Workers:
    """encode_batch over batches, results in input order: in this process (workers=1) or in a
    pool of `options.workers` processes. `close` after the last result; `abort` on failure."""

    def __init__(self, options):
        self._pool = self._throttle = None
        if options.workers == 1:
            init_worker(options)
            return
        self._throttle = _Throttle(2 * options.workers + 2)
        _worker["main_pid"] = os.getpid()  # inherited by the forked workers
        _install_fork_hook()
        _fork_hook["active"] = True
        self._pool = multiprocessing.Pool(options.workers, initializer=init_pool_worker, initargs=(options,))

    def results(self, work: Iterable[Batch]) -> Iterator[BatchResult]:
        if self._pool is None:
            yield from map(encode_batch, work)
            return
        for result in self._pool.imap(encode_batch, self._throttle.feed(work), chunksize=1):
            self._throttle.release()
            yield result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        _fork_hook["active"] = False

    def abort(self) -> None:
        if self._pool is not None:
            self._throttle.stop()
            _stop_pool(self._pool)
            self._pool = None
        _fork_hook["active"] = False
