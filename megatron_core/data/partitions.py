"""An input file cut into byte ranges that begin at line starts, and which rank takes which.

A JSON-lines file of `size` bytes is cut into `n` partitions: boundary k is the first line
start at or after k * size // n (offset 0, or the offset just after a newline). Every line
falls in exactly one partition, so tokenizing the partitions one after another reads the
file's lines in order, exactly once. Worked example, the 25-byte file

    {"a":1}\\n{"a":22}\\n{"a":3}\\n     lines at offsets 0, 8 and 17

    partition_ranges(path, 2) == [(0, 17), (17, 25)]            # 12 falls inside line 2
    partition_ranges(path, 3) == [(0, 8), (8, 17), (17, 25)]    # 8 is a line start; 16 is not
    partition_ranges(path, 5) == [(0, 8), (8, 17), (17, 17), (17, 25), (25, 25)]

A line longer than a partition leaves a partition empty, (17, 17) above: it is still a
partition, written as an empty dataset, so the count the user asked for always holds.

Ranks take the partitions still to do round-robin: with W ranks, rank r takes the r-th,
(r + W)-th, ... of them, which on a fresh run are partitions r, r + W, ...
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

# --partitions left out: one partition per this many bytes of input. Large enough that the
# per-partition work (a part per key, a record, a merge pass) is small next to tokenizing
# it; small enough that a killed run loses minutes, not hours.
PARTITION_BYTES = 256 << 20
_CHUNK = 1 << 20


def automatic_partition_count(size: int, world_size: int = 1) -> int:
    """One partition per PARTITION_BYTES, at least one per rank, a multiple of the ranks."""
    per_rank = math.ceil(max(1, math.ceil(size / PARTITION_BYTES)) / world_size)
    return per_rank * world_size


def next_line_start(f, offset: int, size: int) -> int:
    """The first line start at or after `offset` in the open binary file `f` of `size` bytes."""
    if offset <= 0:
        return 0
    position = offset - 1          # a line starts at `offset` when the byte before it ends a line
    f.seek(position)
    while position < size:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)
    return size


def partition_ranges(path: str, count: int) -> List[Tuple[int, int]]:
    """`count` [start, end) byte ranges of the file at `path`, each starting at a line start."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        starts = [next_line_start(f, k * size // count, size) for k in range(count)]
    return list(zip(starts, starts[1:] + [size]))


def ranks_share(pending: Sequence[int], rank: int, world_size: int) -> List[int]:
    """The partitions (of those still to do, in order) that `rank` of `world_size` tokenizes."""
    return list(pending[rank::world_size])


def count_lines(path: str, start: int, end: int) -> int:
    """Newlines in bytes [start, end) of the file: the lines of a partition that ends at a line start."""
    lines = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            left -= len(chunk)
    return lines
