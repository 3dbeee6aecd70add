"""A torch.save file written one tensor at a time, so a whole output file never sits in memory.

torch.save pickles the object first (tensors become references to storages) and then
writes each storage as its own record of the zip archive. Here the tensors of the object
may be LazyTensor: a shape, a dtype and a function that makes the tensor. The pickle is
written from the shapes alone, in the records torch.load expects (`data.pkl`, `data/<key>`
with the same persistent ids and rebuild function as torch.save), and then each record's
tensor is made, written and dropped in turn. The file loads with
torch.load(weights_only=True) and with mmap=True; it is written atomically (file_io), its
pages sent to disk while later records are made (file_io.EarlyWriteback), and the records
that can be filled in place (LazyTensor.fill) share one reused buffer.
"""
from __future__ import annotations

import collections
import io
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch

from ...atomic_files import write_atomically
from ..file_io import EarlyWriteback

_STORAGE_TYPES = torch.storage._dtype_to_storage_type_map()


@dataclass
class LazyTensor:
    shape: tuple
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]
    # fill(out) writes the tensor into `out` (contiguous, this shape and dtype): the writer
    # then hands every such record the same reused buffer instead of a new allocation
    # (fresh memory costs a page fault per 4 KiB, and freed tensors of many sizes pile up
    # in the C heap instead of going back to the system).
    fill: Optional[Callable[[torch.Tensor], None]] = None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "LazyTensor":
        return cls(tuple(tensor.shape), tensor.dtype, lambda: tensor)

    @classmethod
    def filled(cls, shape: tuple, dtype: torch.dtype, fill: Callable[[torch.Tensor], None]) -> "LazyTensor":
        def make():
            out = torch.empty(shape, dtype=dtype)
            fill(out)
            return out
        return cls(tuple(shape), dtype, make, fill)


class _ReusedBuffer:
    """One byte buffer, grown to the largest record, viewed as each record's tensor in turn."""

    def __init__(self):
        self.bytes = torch.empty(0, dtype=torch.uint8)

    def take(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        nbytes = dtype.itemsize
        for size in shape:
            nbytes *= size
        if self.bytes.numel() < nbytes:
            self.bytes = torch.empty(0, dtype=torch.uint8)     # free the old one first
            self.bytes = torch.empty(nbytes, dtype=torch.uint8)
        return self.bytes[:nbytes].view(dtype).view(shape)


class _Storage:
    def __init__(self, key: str, tensor: LazyTensor):
        self.key, self.tensor = key, tensor
        self.numel = 1
        for size in tensor.shape:
            self.numel *= size


class _Placeholder:
    """Pickles as torch.save pickles a contiguous CPU tensor of its storage."""

    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce_ex__(self, protocol):
        shape = self.storage.tensor.shape
        stride, step = [], 1
        for size in reversed(shape):
            stride.insert(0, step)
            step *= size
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, torch.Size(shape), tuple(stride), False, collections.OrderedDict()))


def _replace_tensors(obj: Any, storages: List[_Storage]) -> Any:
    if isinstance(obj, (LazyTensor, torch.Tensor)):
        lazy = obj if isinstance(obj, LazyTensor) else LazyTensor.of(obj)
        storages.append(_Storage(str(len(storages)), lazy))
        return _Placeholder(storages[-1])
    if isinstance(obj, dict):
        return {k: _replace_tensors(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_replace_tensors(v, storages) for v in obj)
    return obj


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_type = getattr(torch, _STORAGE_TYPES[obj.tensor.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def _write(obj: Any, path: str, writeback: EarlyWriteback) -> int:
    storages: List[_Storage] = []
    plain = _replace_tensors(obj, storages)
    data = io.BytesIO()
    _Pickler(data, protocol=2).dump(plain)
    # The writer opens the temporary by name and writes each storage straight from its
    # memory (a Python file object would get a bytes copy of every tensor first).
    writer = torch._C.PyTorchFileWriter(path, True, 64)
    payload = data.getvalue()
    writer.write_record("data.pkl", payload, len(payload))
    writer.write_record(".format_version", "1", 1)
    writer.write_record(".storage_alignment", "64", 2)
    writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
    try:
        written = 0
        buffer = _ReusedBuffer()
        for storage in storages:
            lazy = storage.tensor
            if lazy.fill is not None:
                tensor = buffer.take(lazy.shape, lazy.dtype)
                lazy.fill(tensor)
            else:
                tensor = lazy.make().detach().to("cpu").contiguous()
            if tuple(tensor.shape) != tuple(lazy.shape) or tensor.dtype != lazy.dtype:
                raise ValueError(f"a lazy tensor promised {lazy.shape} {lazy.dtype}, made "
                                 f"{tuple(tensor.shape)} {tensor.dtype}.")
            if tensor.storage_offset() != 0:
                tensor = tensor.clone()    # a view into its storage: write only its elements
            # The record is the first nbytes of the storage (a buffer or a parent may be longer).
            nbytes = tensor.numel() * tensor.element_size()
            writer.write_record(f"data/{storage.key}", tensor.untyped_storage(), nbytes)
            writeback.wrote(nbytes)
            written += nbytes
            del tensor
        writer.write_end_of_file()
    finally:
        writeback.join()    # never leave a sync running on a file about to be closed
    writeback.finish()
    return written


def save_streamed(obj: Any, path: str) -> None:
    """torch.save(obj, path), atomically, making each LazyTensor only when its record is written."""
    write_atomically(path, lambda f, temporary: _write(obj, temporary, EarlyWriteback(f.fileno())), durable=True)
