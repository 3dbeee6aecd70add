"""The page cache of a benchmark's input files: dropped, filled, and measured.

    drop(paths)               posix_fadvise(POSIX_FADV_DONTNEED) on each file: its clean
                              pages leave the page cache (no root needed; a file's dirty
                              pages stay, so inputs must have been fsynced, as ours are)
    fill(paths)               read each file once, so the next reader finds it cached
    cached_fraction(paths)    the fraction of the files' pages in the page cache, by
                              mincore(2) on a mapping that touches no page (Linux)

So a "cold" round reads its input from the disk, as a resharding of a checkpoint written
hours ago does, and cached_fraction shows that the drop took effect.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from typing import Iterable, Optional

_PROT_READ, _MAP_SHARED = 1, 1
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


_LIBC = _libc()


def drop(paths: Iterable[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fill(paths: Iterable[str], chunk: int = 16 * 2**20) -> None:
    buffer = bytearray(chunk)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def _resident_pages(path: str) -> tuple:
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    if not pages:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _LIBC.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vector = (ctypes.c_ubyte * pages)()
            if _LIBC.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(v & 1 for v in vector), pages
        finally:
            _LIBC.munmap(address, size)
    finally:
        os.close(fd)


def cached_fraction(paths: Iterable[str]) -> Optional[float]:
    resident = total = 0
    for path in paths:
        r, t = _resident_pages(path)
        resident, total = resident + r, total + t
    return round(resident / total, 3) if total else None
