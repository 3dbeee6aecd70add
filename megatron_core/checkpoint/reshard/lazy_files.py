"""Checkpoint files opened once as memory maps, their tensors read with explicit file reads.

torch.load(mmap=True, weights_only=True) unpickles only the small index of a file; its
tensors are views of the mapped file. Unpickling that index is the slow part (about 0.2 s
for 300 tensors), so each file is opened once for the whole run. The bytes are not read
through the mapping: `copy(dest, view)` finds the file offset of the view (a record's
storage sits at base + its zip record offset, checked for every record when the file is
opened) and reads it with one `readinto` straight into the destination, or, for a strided
view or destination (a column slice of a row-major matrix), the span from the view's first
to its last element into one reused scratch buffer and copies from there. No mapped page
is touched, so the reads add nothing to the process's resident memory and cost no page
faults; no tensor is allocated per read.

The optimizer's fields are read the same way (FieldScratch gathers a field split over
the distributed optimizer's data-parallel shards into one reused buffer). Reads that do go
through the mapping (a file whose records do not line up with its storages, a caller that
reads mapped tensors itself) touch mapped pages, which then stay resident while the mapping
lives; `copy` and such callers `count` the bytes, and past `budget_bytes` those pages are
dropped with madvise(MADV_DONTNEED) (the mappings and their index stay valid; a page
touched again is read again from the page cache), or, where madvise is not available, the
mappings are closed and reopened on the next `get`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from ...errors import CheckpointError
from ..file_io import load_file

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
MAX_HANDLES = 32
_MADV_DONTNEED = 4


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise()


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _mapping_base(path: str, state) -> Optional[int]:
    """The address of the file's first byte in torch.load's mapping, or None when the
    record offsets do not line up with the storages one for one (then reads go through
    the mapping)."""
    pointers = sorted({t.untyped_storage().data_ptr() for t in _tensors(state)})
    if not pointers:
        return None
    reader = torch._C.PyTorchFileReader(path)
    offsets = sorted(reader.get_record_offset(name) for name in reader.get_all_records()
                     if name.startswith("data/"))
    base = pointers[0] - offsets[0] if offsets else None
    if len(offsets) != len(pointers) or any(p - o != base for p, o in zip(pointers, offsets)):
        return None
    return base


@dataclass
class _Open:
    path: str
    state: dict
    base: Optional[int]   # address of byte 0 in the mapping (None: read through the mapping)
    size: int


def _read_into(file, tensor: torch.Tensor, offset: int) -> None:
    if tensor.numel() == 0:
        return
    buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    file.seek(offset)
    while len(buffer):
        count = file.readinto(buffer)
        if not count:
            raise CheckpointError(f"{file.name} ends inside a tensor record (offset {offset}); the file is "
                                  f"truncated: restore it or reshard another checkpoint.")
        buffer = buffer[count:]


class LazyFiles:
    def __init__(self, transform: Optional[Callable[[dict, str], dict]] = None, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 allow: Sequence = ()):
        self.transform = transform or (lambda state, path: state)
        self.allow = tuple(allow)
        self.budget_bytes = budget_bytes
        self._open: Dict[str, _Open] = {}
        self._read = 0
        self._scratch_bytes = torch.empty(0, dtype=torch.uint8)
        self._handles: "OrderedDict[str, object]" = OrderedDict()

    def get(self, path: str, allow: Sequence = ()) -> dict:
        """`path`'s state, mapped; `allow`: classes its pickle may name (file_io.load_file)."""
        if path not in self._open:
            raw = load_file(path, mmap=True, allow=self.allow + tuple(allow))
            base = _mapping_base(path, raw)
            self._open[path] = _Open(path, self.transform(raw, path), base, os.path.getsize(path))
        return self._open[path].state

    def _locate(self, view: torch.Tensor) -> Optional[tuple]:
        pointer = view.untyped_storage().data_ptr()
        for opened in self._open.values():
            if opened.base is not None and opened.base <= pointer < opened.base + opened.size:
                return self._handle(opened.path), view.data_ptr() - opened.base
        return None

    def _handle(self, path: str):
        """An unbuffered reader of `path`; the last MAX_HANDLES stay open (a checkpoint may have
        thousands of files, a process a limit of 1024 descriptors)."""
        if path in self._handles:
            self._handles.move_to_end(path)
        else:
            if len(self._handles) >= MAX_HANDLES:
                self._handles.popitem(last=False)[1].close()
            self._handles[path] = open(path, "rb", buffering=0)
        return self._handles[path]

    def copy(self, dest: torch.Tensor, view: torch.Tensor) -> None:
        """dest.copy_(view), where `view` may be a view of an open file: its bytes are read from
        the file (a strided view: the span from its first to its last element, into a scratch
        buffer); a view of no open file is copied as it is."""
        where = self._locate(view) if view.numel() and view.dtype == dest.dtype and \
            all(s >= 0 for s in view.stride()) else None
        if where is None:
            dest.copy_(view)    # through the mapping (or plain memory): its pages count against the budget
            self.count(view.numel() * view.element_size())
            return
        file, offset = where
        if view.is_contiguous() and dest.is_contiguous() and dest.shape == view.shape:
            _read_into(file, dest, offset)
            return
        span = 1 + sum((size - 1) * stride for size, stride in zip(view.shape, view.stride()))
        scratch = self._scratch(span * view.element_size()).view(view.dtype)
        _read_into(file, scratch, offset)
        dest.copy_(scratch.as_strided(view.shape, view.stride()))

    def _scratch(self, nbytes: int) -> torch.Tensor:
        """One reused byte buffer for pieces bound for a strided destination (no allocation each)."""
        if self._scratch_bytes.numel() < nbytes:
            self._scratch_bytes = torch.empty(0, dtype=torch.uint8)
            self._scratch_bytes = torch.empty(nbytes, dtype=torch.uint8)
        return self._scratch_bytes[:nbytes]

    def clone(self, view: torch.Tensor) -> torch.Tensor:
        out = torch.empty(view.shape, dtype=view.dtype)
        self.copy(out, view)
        return out

    def count(self, nbytes: int) -> None:
        """Note `nbytes` read through the mappings; past the budget their resident pages are
        dropped (views stay valid where madvise works; elsewhere the mappings are closed, so
        callers must not keep views of a file across a count)."""
        self._read += nbytes
        if self._read >= self.budget_bytes:
            self._read = 0
            if not self._drop_pages():
                self.release()

    def _drop_pages(self) -> bool:
        if _MADVISE is None:
            return False
        for opened in self._open.values():
            if opened.base is None or _MADVISE(opened.base, opened.size, _MADV_DONTNEED) != 0:
                return False
        return True

    def release(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._open.clear()
        self._read = 0
        self._scratch_bytes = torch.empty(0, dtype=torch.uint8)


class FieldScratch:
    """Reused buffers for optimizer fields whose elements lie in several flat pieces (the
    distributed optimizer's data-parallel shards): one buffer per source tensor-parallel rank
    (a target shard may take pieces of several), grown to the largest field and refilled only
    when another field is asked for, so a field read range by range is assembled once."""

    def __init__(self):
        self._slots: Dict[object, tuple] = {}    # slot -> (key of the field held, byte buffer)

    def assemble(self, key: tuple, numel: int, pieces: Sequence[tuple], files: LazyFiles) -> torch.Tensor:
        """The `numel` elements of `pieces` ([(first, end, flat view)]) in one reused buffer;
        `key` names the field (its second item the source rank: the slot)."""
        dtype = pieces[0][2].dtype
        held, buffer = self._slots.get(key[1], (None, torch.empty(0, dtype=torch.uint8)))
        nbytes = numel * dtype.itemsize
        if held == key:
            return buffer[:nbytes].view(dtype)
        if buffer.numel() < nbytes:
            buffer = torch.empty(0, dtype=torch.uint8)      # free the old one first
            buffer = torch.empty(nbytes, dtype=torch.uint8)
        out = buffer[:nbytes].view(dtype)
        if sum(end - first for first, end, _ in pieces) < numel:
            out.zero_()        # elements no shard holds (none in a complete checkpoint)
        for first, end, view in pieces:
            files.copy(out[first:end], view)
        self._slots[key[1]] = (key, buffer)
        return out


__all__ = ["DEFAULT_BUDGET_BYTES", "FieldScratch", "LazyFiles"]
