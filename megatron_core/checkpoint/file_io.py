"""Checkpoint files on disk: written whole or not at all, read without running code.

save_file: torch.save streams the state into a temporary file in the target directory,
which is fsynced, renamed, and the directory fsynced, so a crash (kill -9, power loss)
leaves either the old file or the complete new one under the final name, never a half
file. It writes through a Python file object, not a path: then a full disk is the OS error
it is (torch.save to a path reports an opaque RuntimeError; to a file object, the
OSError under a RuntimeError of its writer's close), named after the checkpoint file; and no in-memory copy of the state is made (bench/checkpoint.py: that copy cost a
third of the save time and as much memory again as the state). The bytes are checksummed
on their way (checksums.py): save_file returns the file's record for the checkpoint's
manifest (manifest.py).

load_file: torch.load(weights_only=True) only. A file whose pickle stream asks for
anything but tensors and plain containers is refused with one sentence naming it, and no
code from it runs. `mmap=True` maps the file instead of reading it (tensors page in when
touched: tools that merge shards one tensor at a time). `allow_namespace=True` (foreign
checkpoints only) also rebuilds argparse.Namespace, which Megatron-LM and
Chinese-Transformer-XL pickle as `args`: a Namespace is only an attribute dict, so this
runs no code either; every other class stays refused.

"""
from __future__ import annotations

import argparse
import os
import pickle
import threading
import zipfile
from typing import Any, BinaryIO, Sequence

import torch

from ..atomic_files import write_atomically
from ..errors import CheckpointError
from .checksums import ChecksummingWriter, FileRecord

class EarlyWriteback:
    """Puts a file being written on disk while the rest of it is still being made: after
    every `every_bytes` written (`wrote(n)`), an fdatasync of what is there so far runs in
    a background thread (the disk writes overlap the work; the final fsync of
    write_atomically(durable=True) then waits only for the tail). `finish()` waits for it and raises the
    error it met, if any (an error reported to this fsync would not be reported again)."""

    def __init__(self, fileno: int, every_bytes: int = 128 * 1024 * 1024):
        self.fileno, self.every_bytes = fileno, every_bytes
        self.pending = 0
        self.thread = None
        self.error = None

    def _sync(self) -> None:
        try:
            getattr(os, "fdatasync", os.fsync)(self.fileno)     # no fdatasync on some systems
        except OSError as error:
            self.error = error

    def wrote(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.every_bytes and (self.thread is None or not self.thread.is_alive()):
            self.pending = 0
            self.thread = threading.Thread(target=self._sync, daemon=True)
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def write_bytes_atomically(path: str, payload) -> None:
    """`payload` (bytes-like) as `path`: temporary, fsync, rename, fsync the directory."""
    write_atomically(path, lambda f, _: f.write(payload), durable=True)


def save_file(state: Any, path: str, optimizer_only: bool = False) -> FileRecord:
    """torch.save(state) as `path`, atomically; its size and checksums (optimizer_only: the
    file holds optimizer state alone, which a weights-only load skips)."""
    writers = []

    def write(f, _):
        writers.append(ChecksummingWriter(f))
        _torch_save(state, writers[-1])
    write_atomically(path, write, durable=True)
    return writers[-1].record(path, optimizer_only)


def _torch_save(state: Any, f: BinaryIO) -> None:
    """torch.save into `f`; a failed write (full disk, file size limit) is the OSError it is.
    (torch's zip writer, closing after the failure, raises a RuntimeError over it.)"""
    try:
        torch.save(state, f)
    except RuntimeError as error:
        cause = error.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def load_file(path: str, map_location="cpu", mmap: bool = False, allow_namespace: bool = False,
              allow: Sequence = ()) -> Any:
    """mmap=True: tensors are views of the file mapped into memory, read only where touched
    (resharding reads slices of many files this way). allow_namespace: the argparse.Namespace
    that Megatron-LM / DeepSpeed files pickle as their args, and nothing else. `allow`: more
    classes allowed by name (DeepSpeed's plain state holders in its ZeRO files)."""
    allowed = ([argparse.Namespace] if allow_namespace else []) + list(allow)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason
                      else "")
        raise CheckpointError(f"{path} carries a pickle payload that safe loading refuses ({detail.strip()}); it "
                              f"was not loaded and no code from it ran. Load only checkpoints you trust to "
                              f"convert it, or use one saved by this package.") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint file ({str(error).splitlines()[0]}); it is "
                              f"damaged or was not written by torch.save; restore it or load another "
                              f"checkpoint.") from None
