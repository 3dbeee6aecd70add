"""What a partitioned preprocessing run has finished, kept next to its output so a killed run goes on.

    {output_prefix}.progress/
        run.json                             what the run is: the input (path, size, mtime), the
                                             tokenizer and its files, the keys and flags that shape
                                             the output, and the byte range of every partition
        part00003_text_document.bin / .idx   partition 3's dataset, one pair per --json-keys key
        part00003.json                       partition 3 is done: its byte range, its counts, the
                                             sizes of its files, which rank made it and how fast

Write first, announce last. A partition's datasets are published (temporary, rename) and
fsynced, and only then its record is written (temporary, fsync, rename). A later run trusts
a partition only when its record is there, names the partition's byte range in run.json, and
its files have the sizes the record names; anything else (a temporary of a killed run, a
dataset without a record) is written again. Each partition is written by one process, so
ranks never write the same file; run.json is written by rank 0 alone, before any partition.

When every partition has its record, each key's parts are merged in partition order into a
dataset in this folder, the merged datasets are renamed to their final names (.bin, then
.idx), and the folder is removed, run.json first: a folder without run.json holds nothing a
run may trust, and the next run clears it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron_core.atomic_files import publish, write_atomically
from megatron_core.data.indexed_dataset import data_file_path, index_file_path, merge_datasets
from megatron_core.errors import DataError

FORMAT = 1
RUN_FILE = "run.json"
_RECORD = re.compile(r"^part(\d+)\.json$")

Ranges = List[Tuple[int, int]]


def progress_directory(output_prefix: str) -> str:
    return output_prefix + ".progress"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Progress:
    """The progress folder of one output prefix. `names`: key -> dataset name within the prefix
    (`text_document`), the same names the final datasets take after `{output_prefix}_`."""

    def __init__(self, output_prefix: str, names: Dict[str, str]):
        self.directory = progress_directory(output_prefix)
        self.names = dict(names)

    # -- where things are -----------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.isdir(self.directory)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def part_prefix(self, index: int, key: str) -> str:
        return self._path(f"part{index:05d}_{self.names[key]}")

    def _record_path(self, index: int) -> str:
        return self._path(f"part{index:05d}.json")

    def _part_files(self, index: int) -> List[str]:
        prefixes = [self.part_prefix(index, key) for key in self.names]
        return [path for prefix in prefixes for path in (data_file_path(prefix), index_file_path(prefix))]

    # -- starting or resuming (rank 0, before any other rank writes) -----------------------

    def _read_run(self) -> Optional[dict]:
        path = self._path(RUN_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
            if run.get("format") != FORMAT:
                raise ValueError
            return run
        except ValueError:
            raise DataError(f"{path} is not a progress file this version reads; delete {self.directory} "
                            f"to start over.") from None

    def open(self, identity: Dict[str, str], partitions: Optional[int],
             ranges_for: Callable[[], Ranges]) -> Tuple[Ranges, Dict[int, dict], bool]:
        """(every partition's byte range, the records of those already done, whether an earlier
        run's folder was found). Starts the folder
        when there is none (a folder without run.json is a finished run's leftovers: cleared);
        otherwise the recorded run must be this one (`identity`: what the output depends on,
        as phrases naming the flags; `partitions`: the count asked for, None to take the
        recorded one), or one sentence says what differs."""
        run = self._read_run() if self.exists() else None
        if run is None:
            if self.exists():
                shutil.rmtree(self.directory)
            os.makedirs(self.directory)
            ranges = ranges_for()
            run = {"format": FORMAT, "identity": identity, "partitions": [list(r) for r in ranges]}
            write_atomically(self._path(RUN_FILE), lambda f, _: f.write(json.dumps(run, indent=1).encode()),
                             durable=True)
            return ranges, {}, False
        ranges = [tuple(r) for r in run["partitions"]]
        was, now = [], []
        for name, phrase in identity.items():
            if run["identity"].get(name) != phrase:
                was.append(run["identity"].get(name, f"no {name}"))
                now.append(phrase)
        if partitions is not None and partitions != len(ranges):
            was.append(f"--partitions {len(ranges)}")
            now.append(f"--partitions {partitions}")
        if was:
            raise DataError(f"{self.directory} holds {_records(self.directory)} of {len(ranges)} finished "
                            f"partitions of a run with {', '.join(was)}, but this run has {', '.join(now)}; run "
                            f"that command again to resume it, or delete {self.directory} to start over.")
        for name in os.listdir(self.directory):     # temporaries of a killed run: nobody writes them now
            if name.endswith(".tmp"):
                os.remove(self._path(name))
        return ranges, self.finished(ranges), True

    def finished(self, ranges: Sequence[Tuple[int, int]]) -> Dict[int, dict]:
        """{partition: its record} for each partition whose record and files can be trusted."""
        done = {}
        for name in os.listdir(self.directory):
            match = _RECORD.match(name)
            if not match:
                continue
            index = int(match.group(1))
            try:
                with open(self._path(name), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if index >= len(ranges) or (record.get("start"), record.get("end")) != tuple(ranges[index]):
                continue
            files = record.get("files", {})
            if all(os.path.isfile(path) and os.path.getsize(path) == files.get(os.path.basename(path))
                   for path in self._part_files(index)):
                done[index] = record
        return done

    # -- one partition done (the rank that tokenized it) ------------------------------------

    def record(self, index: int, start: int, end: int, **details) -> None:
        """Announce partition `index` done, once its datasets are published."""
        files = {}
        for path in self._part_files(index):
            _fsync(path)
            files[os.path.basename(path)] = os.path.getsize(path)
        record = {"index": index, "start": start, "end": end, "files": files, **details}
        write_atomically(self._record_path(index), lambda f, _: f.write(json.dumps(record).encode()), durable=True)

    # -- the end (rank 0) --------------------------------------------------------------------

    def merge(self, finals: Dict[str, str], count: int) -> None:
        """Each key's parts in partition order into its final dataset (`finals`: key -> final
        prefix), then remove the folder."""
        merged = {}
        for key in finals:
            merged[key] = self._path(f"merged_{self.names[key]}")
            merge_datasets([self.part_prefix(index, key) for index in range(count)], merged[key])
        for key, final in finals.items():
            publish(data_file_path(merged[key]), data_file_path(final))
            publish(index_file_path(merged[key]), index_file_path(final))
        self.remove()

    def remove(self) -> None:
        run = self._path(RUN_FILE)
        if os.path.exists(run):
            os.remove(run)
        shutil.rmtree(self.directory, ignore_errors=True)


def _records(directory: str) -> int:
    """How many partition records `directory` holds, unchecked."""
    return sum(1 for name in os.listdir(directory) if _RECORD.match(name))


def kept_partitions(output_prefix: str) -> Optional[Tuple[int, int, str]]:
    """(records, partitions, folder) of the progress kept for `output_prefix`, or None: for the
    line a stopped run ends with. Counts the records without checking them."""
    directory = progress_directory(output_prefix)
    try:
        with open(os.path.join(directory, RUN_FILE), encoding="utf-8") as f:
            partitions = len(json.load(f)["partitions"])
        records = _records(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return records, partitions, directory
