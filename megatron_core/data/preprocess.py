"""JSON lines -> Megatron indexed datasets, in one pass or in partitions that a killed run resumes.

One pass (a small input, or a .jsonl.gz, which cannot be read from the middle): the
batches that the worker pool tokenizes (preprocess_workers.py) are appended in input order
to one IndexedDatasetBuilder per JSON key, under temporary names renamed at the end.

In partitions (--partitions N, an input of more than PARTITION_BYTES, or --distributed):
the input is cut into byte ranges that begin at line starts (partitions.py). Each partition
becomes a dataset per key of its own, published with a record in the progress folder next
to the output (preprocess_progress.py); when every partition has its record, the parts are
merged in partition order. Merging concatenates documents and rebuilds the index from their
lengths, so the result is byte for byte what one pass writes. A run killed at any moment and
started again with the same arguments keeps the recorded partitions and tokenizes the rest;
with --distributed the ranks share the partitions out (preprocess_team.py) and rank 0 merges.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_core.atomic_files import remove_quietly
from megatron_core.data.indexed_dataset import (
    IndexedDatasetBuilder,
    best_dtype,
    data_file_path,
    index_file_path,
)
from megatron_core.data.partitions import (
    PARTITION_BYTES,
    automatic_partition_count,
    count_lines,
    partition_ranges,
    ranks_share,
)
from megatron_core.data.preprocess_progress import Progress
from megatron_core.data.preprocess_team import Team
from megatron_core.data.preprocess_workers import (
    BATCH_BYTES,
    BATCH_LINES,
    BatchResult,
    Workers,
    batches,
    checked_lines,
    lines_in_range,
    open_input,
)
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import DataError, describe_os_error

MAX_REPORTED = 10  # bad lines printed one by one; the rest are only counted
SHARED_OUTPUT = "with --distributed, --output-prefix must be on a file system every host shares (NFS, Lustre, ...)."


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
    partitions: Optional[int] = None   # None: one per PARTITION_BYTES of input, at least one per rank

    def tokenizer_kwargs(self) -> dict:
        return dict(tokenizer_type=self.tokenizer_type, vocab_file=self.vocab_file,
                    merge_file=self.merge_file, tokenizer_model=self.tokenizer_model,
                    vocab_extra_ids=self.vocab_extra_ids)


def dataset_name(key: str, split: bool) -> str:
    return f"{key}_{'sentence' if split else 'document'}"


def output_prefix_for(output_prefix: str, key: str, split: bool) -> str:
    """Megatron's naming: {prefix}_{key}_document, or _sentence with --split-sentences."""
    return f"{output_prefix}_{dataset_name(key, split)}"


def _file_phrase(flag: str, path: Optional[str]) -> str:
    if path is None:
        return f"no {flag}"
    if not os.path.exists(path):        # e.g. a tokenizer named on the HuggingFace hub
        return f"{flag} {path}"
    stat = os.stat(path)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime_ns // 10**9))
    return f"{flag} {os.path.realpath(path)} ({stat.st_size} bytes, modified {when}.{stat.st_mtime_ns % 10**9:09d})"


def run_identity(options: PreprocessOptions) -> Dict[str, str]:
    """What the output of a partitioned run depends on, as the phrases a message names it by:
    resuming a run whose phrases differ would join parts of two different datasets."""
    def switch(flag: str, on: bool) -> str:
        return flag if on else f"no {flag}"
    return {
        "input": _file_phrase("--input", options.input),
        "json_keys": "--json-keys " + " ".join(options.json_keys),
        "tokenizer_type": f"--tokenizer-type {options.tokenizer_type}",
        "vocab_file": _file_phrase("--vocab-file", options.vocab_file),
        "merge_file": _file_phrase("--merge-file", options.merge_file),
        "tokenizer_model": _file_phrase("--tokenizer-model", options.tokenizer_model),
        "vocab_extra_ids": f"--vocab-extra-ids {options.vocab_extra_ids}",
        "append_eod": switch("--append-eod", options.append_eod),
        "split_sentences": switch("--split-sentences", options.split_sentences),
        "strict": switch("--strict", options.strict),
    }


# ---------------------------------------------------------------------------------------
# Counting


@dataclass
class Counts:
    """What a stretch of the input gave: its lines, and what became of them per key."""
    lines: int = 0
    input_bytes: int = 0
    blank_lines: int = 0
    documents: Dict[str, int] = field(default_factory=dict)       # written, per key
    empty_documents: Dict[str, int] = field(default_factory=dict)
    sequences: Dict[str, int] = field(default_factory=dict)
    tokens: Dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)             # reason -> lines

    def start(self, keys: Sequence[str]) -> "Counts":
        for table in (self.documents, self.empty_documents, self.sequences, self.tokens):
            table.update({k: 0 for k in keys})
        return self

    def add_result(self, result: BatchResult) -> None:
        self.lines += result.num_lines
        self.input_bytes += result.num_bytes
        self.blank_lines += result.blank_lines
        self.skipped.update(reason for _, reason, _ in result.bad)
        for key, part in result.keys.items():
            self.documents[key] += len(part.sequences_per_doc)
            self.empty_documents[key] += part.empty_documents
            self.sequences[key] += len(part.lengths)
            self.tokens[key] += part.tokens.size

    def add(self, other: "Counts") -> None:
        self.lines += other.lines
        self.input_bytes += other.input_bytes
        self.blank_lines += other.blank_lines
        self.skipped.update(other.skipped)
        for mine, theirs in ((self.documents, other.documents), (self.empty_documents, other.empty_documents),
                             (self.sequences, other.sequences), (self.tokens, other.tokens)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n

    def to_dict(self) -> dict:
        """The counts as JSON (a partition's record keeps them)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(Counts)}
        d["skipped"] = dict(self.skipped)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Counts":
        counts = cls(**{f.name: d[f.name] for f in dataclasses.fields(Counts)})
        counts.skipped = Counter(counts.skipped)
        return counts


@dataclass(kw_only=True)
class PreprocessSummary(Counts):
    """The whole output's counts (kept partitions included), and this run's share of the work."""
    input: str
    outputs: Dict[str, str]                   # key -> dataset prefix
    output_bytes: int = 0
    first_bad: List[Tuple[int, str, str]] = field(default_factory=list)
    elapsed: float = 0.0
    partitions: int = 1
    kept_partitions: int = 0                  # finished by an earlier run, not tokenized again
    kept_lines: int = 0
    kept_bytes: int = 0
    rank: int = 0
    ranks: List[dict] = field(default_factory=list)   # each rank's throughput (--distributed)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["skipped"] = dict(self.skipped)
        return d


class _Progress:
    """Prints a progress line every `interval` documents: rate, throughput, ETA."""

    def __init__(self, interval: int, total_bytes: int, prefix: str = "", stream=None):
        self.interval, self.total, self.prefix = interval, total_bytes, prefix
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.next_report = interval

    def update(self, documents: int, tokens: int, done: int) -> None:
        if self.interval <= 0 or documents < self.next_report:
            return
        self.next_report = (documents // self.interval + 1) * self.interval
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        line = (f"{self.prefix}processed {documents} documents, {tokens} tokens "
                f"({documents / elapsed:.0f} docs/s, {tokens / elapsed:.0f} tokens/s, "
                f"{done / elapsed / 1e6:.2f} MB/s")
        if self.total and done:
            fraction = min(done / self.total, 1.0)
            eta = elapsed * (1 - fraction) / max(fraction, 1e-9)
            line += f", {100 * fraction:.0f}% of input, ETA {eta:.0f} s"
        print(line + ")", file=self.stream, flush=True)


class _LineNumbers:
    """Line numbers in the file for lines numbered within their partition. The lines before
    a partition are counted (one read of the partitions before it) only when a bad line in
    it must be named; finished partitions know their own counts."""

    def __init__(self, path: str, ranges: Sequence[Tuple[int, int]], known: Dict[int, int]):
        self.path, self.ranges, self.known = path, ranges, dict(known)

    def in_file(self, partition: int, line: int) -> int:
        for j in range(partition):
            if j not in self.known:
                self.known[j] = count_lines(self.path, *self.ranges[j])
        return sum(self.known[j] for j in range(partition)) + line


class _BadLines:
    """Names the first MAX_REPORTED bad lines (the rest are only counted), or stops at the
    first one under --strict."""

    def __init__(self, options: PreprocessOptions, report, numbers: _LineNumbers):
        self.options, self.report, self.numbers = options, report, numbers
        self.seen = 0
        self.first: List[Tuple[int, str, str]] = []

    def check(self, result: BatchResult, partition: int) -> None:
        for line, reason, detail in result.bad:
            self.seen += 1
            if self.options.strict or len(self.first) < MAX_REPORTED:
                line = self.numbers.in_file(partition, line)
            if self.options.strict:
                raise DataError(
                    f"{self.options.input}, line {line}: {reason} ({detail}); fix or remove the "
                    f"line, or drop --strict to skip bad lines.")
            if len(self.first) < MAX_REPORTED:
                self.first.append((line, reason, detail))
                self.report(f"skipping {self.options.input}, line {line}: {reason} ({detail})")
            elif self.seen == MAX_REPORTED + 1:
                self.report("further bad lines are counted but not shown")


def _check_some_documents(options: PreprocessOptions, counts: Counts, first_bad) -> None:
    if sum(counts.documents.values()) == 0:
        first = f" (first: line {first_bad[0][0]}, {first_bad[0][1]})" if first_bad else ""
        raise DataError(
            f"--input {options.input} produced no documents: {counts.lines} lines read, "
            f"{sum(counts.skipped.values())} skipped{first}; each line must be a JSON "
            f"object with a non-empty string under --json-keys "
            f"{' '.join(options.json_keys)}.")


# ---------------------------------------------------------------------------------------
# Tokenizing units (the whole input, or partitions) into sinks


@dataclass
class _Unit:
    index: int                 # partition number (0 for the whole input)
    start: int
    end: Optional[int]         # None: to the end of the stream (one pass)


class _Source:
    def __init__(self, path: str):
        self.path = path
        self.stream, self.raw = open_input(path)
        self.gz = self.stream is not self.raw
        self.size = os.path.getsize(path)

    def lines(self, unit: _Unit):
        lines = self.stream if unit.end is None else lines_in_range(self.raw, unit.start, unit.end)
        return checked_lines(lines, self.path, self.gz)

    def close(self) -> None:
        self.stream.close()
        self.raw.close()


class _FinalSink:
    """One pass: the datasets are written under their final names."""

    def __init__(self, options: PreprocessOptions, prefixes: Dict[str, str], dtype, bad: _BadLines):
        self.options, self.prefixes, self.dtype, self.bad = options, prefixes, dtype, bad
        self.builders: Dict[str, IndexedDatasetBuilder] = {}
        self.published: List[str] = []
        self.output_bytes = 0

    def open(self, unit: _Unit) -> Dict[str, IndexedDatasetBuilder]:
        for key, prefix in self.prefixes.items():
            self.builders[key] = IndexedDatasetBuilder(data_file_path(prefix), dtype=self.dtype)
        return self.builders

    def close(self, unit: _Unit, counts: Counts) -> None:
        _check_some_documents(self.options, counts, self.bad.first)
        for key, prefix in self.prefixes.items():
            self.builders[key].finalize(index_file_path(prefix))
            self.published.append(prefix)
            self.output_bytes += os.path.getsize(data_file_path(prefix)) + os.path.getsize(index_file_path(prefix))

    def abort(self) -> None:
        # Nothing is left behind, not even the datasets of the keys finished before the one that failed.
        for builder in self.builders.values():
            builder.abort()
        for prefix in self.published:
            for path in (index_file_path(prefix), data_file_path(prefix)):
                remove_quietly(path)


class _PartSink:
    """In partitions: each partition's datasets go to the progress folder, then its record."""

    def __init__(self, progress: Progress, dtype, team: Team):
        self.progress, self.dtype, self.team = progress, dtype, team
        self.builders: Dict[str, IndexedDatasetBuilder] = {}

    def open(self, unit: _Unit) -> Dict[str, IndexedDatasetBuilder]:
        self.started = time.perf_counter()
        self.builders = {key: IndexedDatasetBuilder(data_file_path(self.progress.part_prefix(unit.index, key)),
                                                    dtype=self.dtype) for key in self.progress.names}
        return self.builders

    def close(self, unit: _Unit, counts: Counts) -> None:
        for key, builder in self.builders.items():
            builder.finalize(index_file_path(self.progress.part_prefix(unit.index, key)))
        self.builders = {}
        self.progress.record(unit.index, unit.start, unit.end, counts=counts.to_dict(), rank=self.team.rank,
                             host=self.team.host, seconds=round(time.perf_counter() - self.started, 3))

    def abort(self) -> None:
        for builder in self.builders.values():
            builder.abort()


def _tokenize(options: PreprocessOptions, source: _Source, units: List[_Unit], sink, bad: _BadLines,
              prefix: str = "") -> Counts:
    """Tokenize `units` in order into `sink` (open, then close once a unit's last batch is in);
    this run's counts. On any failure the sink drops what it has not finished, then the workers stop."""
    keys = list(options.json_keys)
    total = source.size if units[0].end is None else sum(u.end - u.start for u in units)
    progress = _Progress(options.log_interval, total, prefix)
    done, part, workers, builders = Counts().start(keys), None, None, {}
    try:
        workers = Workers(options)
        work = batches(((source.lines(u), u.start == 0) for u in units), options.batch_bytes, options.batch_lines,
                       None if source.gz else total, options.workers)
        for result in workers.results(work):
            unit = units[result.unit]
            if part is None:
                part, builders = Counts().start(keys), sink.open(unit)
            bad.check(result, unit.index)
            part.add_result(result)
            for key, tokens in result.keys.items():
                builders[key].add_documents(tokens.tokens, tokens.lengths, tokens.sequences_per_doc)
            position = source.raw.tell() if source.gz else done.input_bytes + part.input_bytes
            progress.update(done.documents[keys[0]] + part.documents[keys[0]],
                            done.tokens[keys[0]] + part.tokens[keys[0]], position)
            if result.last:
                sink.close(unit, part)
                done.add(part)
                part = None
        workers.close()
    except BaseException:
        sink.abort()               # files first: whatever happens while stopping the workers
        if workers is not None:
            workers.abort()
        raise
    return done


# ---------------------------------------------------------------------------------------
# Driving


def _check_options(options: PreprocessOptions) -> None:
    if options.workers < 1:
        raise DataError(f"--workers {options.workers} must be at least 1.")
    if options.batch_lines < 1:
        raise DataError(f"--batch-lines {options.batch_lines} must be at least 1.")
    if options.partitions is not None and options.partitions < 1:
        raise DataError(f"--partitions {options.partitions} must be at least 1.")
    if not options.json_keys:
        raise DataError("--json-keys needs at least one key, e.g. --json-keys text.")
    repeated = sorted({k for k in options.json_keys if list(options.json_keys).count(k) > 1})
    if repeated:
        raise DataError(f"--json-keys names {', '.join(repeated)} more than once; give each key once.")
    out_dir = os.path.dirname(os.path.abspath(options.output_prefix))
    if not os.path.isdir(out_dir):
        raise DataError(f"--output-prefix {options.output_prefix}: directory {out_dir} "
                        f"does not exist; create it first.")


def preprocess(options: PreprocessOptions, log=None, team: Optional[Team] = None) -> PreprocessSummary:
    """Run the whole conversion; raises DataError for user mistakes. One pass leaves nothing
    behind when it fails; a partitioned run keeps its finished partitions for the next run."""
    report = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    team = team or Team()
    _check_options(options)
    start = time.perf_counter()
    tokenizer = build_tokenizer(**options.tokenizer_kwargs())  # fail fast on bad flags
    if options.append_eod and tokenizer.eod is None:
        raise DataError(f"--append-eod: tokenizer {options.tokenizer_type} has no "
                        f"end-of-document token; drop --append-eod or use another tokenizer.")
    dtype = best_dtype(tokenizer.vocab_size)
    names = {k: dataset_name(k, options.split_sentences) for k in options.json_keys}
    prefixes = {k: output_prefix_for(options.output_prefix, k, options.split_sentences) for k in names}
    source = _Source(options.input)
    try:
        progress = Progress(options.output_prefix, names)
        if _in_one_pass(options, source, team, progress, report):
            summary = _one_pass(options, source, prefixes, dtype, report)
        else:
            summary = _in_partitions(options, source, prefixes, dtype, progress, team, report)
    finally:
        source.close()
    summary.elapsed = time.perf_counter() - start
    return summary


def _in_one_pass(options: PreprocessOptions, source: _Source, team: Team, progress: Progress, report) -> bool:
    if source.gz:
        if (options.partitions or 1) > 1 or team.world_size > 1:
            wanted = "--distributed" if team.world_size > 1 else f"--partitions {options.partitions}"
            raise DataError(f"--input {options.input} is gzip-compressed, which cannot be read from the middle "
                            f"as {wanted} needs; decompress it first (gunzip -k {options.input}) and pass the "
                            f".jsonl.")
        if options.partitions is None and source.size > PARTITION_BYTES:
            report(f"--input {options.input} is gzip-compressed, so it is tokenized in one pass with no progress "
                   f"recorded (a stopped run starts over); decompress it first (gunzip -k) to have a rerun "
                   f"resume where it stopped.")
        return True
    if team.world_size > 1 or progress.exists():
        return False
    return (options.partitions or automatic_partition_count(source.size)) == 1


def _one_pass(options, source, prefixes, dtype, report) -> PreprocessSummary:
    bad = _BadLines(options, report, _LineNumbers(options.input, [(0, source.size)], {}))
    sink = _FinalSink(options, prefixes, dtype, bad)
    counts = _tokenize(options, source, [_Unit(0, 0, None)], sink, bad)
    summary = PreprocessSummary(input=options.input, outputs=prefixes, output_bytes=sink.output_bytes,
                                first_bad=bad.first)
    summary.add(counts)
    return summary


def _plan(options, source, progress: Progress, team: Team):
    """Rank 0 reads (or starts) the progress folder; every rank gets (partition ranges, records
    of the finished ones, whether this resumes an earlier run)."""
    plan = error = None
    if team.rank == 0:
        try:
            count = options.partitions or automatic_partition_count(source.size, team.world_size)
            plan = progress.open(run_identity(options), options.partitions,
                                 lambda: partition_ranges(options.input, count))
        except (DataError, OSError) as e:
            error = str(e) if isinstance(e, DataError) else describe_os_error(e)
            team.broadcast((None, error))       # the other ranks stop with rank 0's sentence
            raise
    plan, error = team.broadcast((plan, error))
    if error:
        raise DataError(error)
    if not progress.exists():
        raise DataError(f"rank {team.rank} on {team.host} does not see {progress.directory}, which rank 0 made; "
                        + SHARED_OUTPUT)
    return plan


def _in_partitions(options, source, prefixes, dtype, progress: Progress, team: Team, report) -> PreprocessSummary:
    ranges, done, resumed = _plan(options, source, progress, team)
    kept = Counts().start(options.json_keys)
    for record in done.values():
        kept.add(Counts.from_dict(record["counts"]))
    if team.rank == 0 and resumed:
        report(f"resuming from {progress.directory}: kept {len(done)} of {len(ranges)} partitions "
               f"({kept.lines} lines, {kept.input_bytes / 1e6:.1f} MB of the input), tokenizing the other "
               f"{len(ranges) - len(done)}")
    pending = [k for k in range(len(ranges)) if k not in done]
    units = [_Unit(k, *ranges[k]) for k in ranks_share(pending, team.rank, team.world_size)]
    bad = _BadLines(options, report, _LineNumbers(options.input, ranges,
                                                  {k: r["counts"]["lines"] for k, r in done.items()}))
    began = time.perf_counter()
    counts = Counts().start(options.json_keys)
    if units:
        try:
            counts = _tokenize(options, source, units, _PartSink(progress, dtype, team), bad,
                               f"rank {team.rank}: " if team.world_size > 1 else "")
        except BaseException:
            if team.world_size == 1 and not progress.finished(ranges):
                progress.remove()         # nothing finished: leave nothing behind, as one pass does
            raise
    mine = {"rank": team.rank, "host": team.host, "partitions": len(units),
            "documents": counts.documents[options.json_keys[0]], "bytes": counts.input_bytes,
            "seconds": time.perf_counter() - began}
    ranks = team.gather(mine)             # returns once every rank has recorded its partitions
    summary = PreprocessSummary(input=options.input, outputs=prefixes, first_bad=bad.first, partitions=len(ranges),
                                kept_partitions=len(done), kept_lines=kept.lines, kept_bytes=kept.input_bytes,
                                rank=team.rank, ranks=ranks)
    if team.rank != 0:
        summary.add(counts)
        return summary
    records = progress.finished(ranges)
    missing = [k for k in range(len(ranges)) if k not in records]
    if missing:
        raise DataError(f"{progress.directory} has no finished record of partition(s) "
                        f"{', '.join(map(str, missing[:5]))} although every rank is done; " + SHARED_OUTPUT)
    for record in records.values():
        summary.add(Counts.from_dict(record["counts"]))
    _check_some_documents(options, summary, bad.first)
    progress.merge(prefixes, len(ranges))
    summary.output_bytes = sum(os.path.getsize(path(prefix)) for prefix in prefixes.values()
                               for path in (data_file_path, index_file_path))
    return summary


def _rate(documents: int, size: int, seconds: float) -> str:
    seconds = max(seconds, 1e-9)
    return f"{documents / seconds:.0f} docs/s, {size / 1e6 / seconds:.2f} MB/s"


def _rank_line(stats: dict) -> str:
    return (f"rank {stats['rank']} on {stats['host']}: {stats['partitions']} partitions, {stats['documents']} "
            f"documents, {stats['bytes'] / 1e6:.2f} MB in {stats['seconds']:.1f} s "
            f"({_rate(stats['documents'], stats['bytes'], stats['seconds'])})")


def format_summary(summary: PreprocessSummary) -> str:
    """A few human-readable lines for the end of a run (rank 0's; another rank's is its throughput)."""
    if summary.rank != 0:
        return _rank_line(summary.ranks[summary.rank]) + "; rank 0 merges the partitions"
    lines = summary.lines - summary.kept_lines
    size = summary.input_bytes - summary.kept_bytes
    first = (f"done in {summary.elapsed:.1f} s: read {lines} lines "
             f"({size / 1e6:.1f} MB, {size / 1e6 / max(summary.elapsed, 1e-9):.2f} MB/s)")
    if summary.kept_partitions:
        first += (f", kept {summary.kept_partitions} of {summary.partitions} partitions of an earlier run "
                  f"({summary.kept_lines} lines, {summary.kept_bytes / 1e6:.1f} MB)")
    out = [first + f", wrote {summary.output_bytes / 1e6:.1f} MB"]
    if len(summary.ranks) > 1:
        out += ["  " + _rank_line(stats) for stats in summary.ranks]
        seconds = max(stats["seconds"] for stats in summary.ranks)
        documents = sum(stats["documents"] for stats in summary.ranks)
        size = sum(stats["bytes"] for stats in summary.ranks)
        out.append(f"  all {len(summary.ranks)} ranks: {sum(s['partitions'] for s in summary.ranks)} partitions, "
                   f"{documents} documents, {size / 1e6:.2f} MB in {seconds:.1f} s ({_rate(documents, size, seconds)})")
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
