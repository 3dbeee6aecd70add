"""Output files that appear under their final name complete, or not at all.

Each is written under a temporary name in its own directory (so the final rename never
crosses a file system) and renamed when complete; whatever fails on the way removes the
temporary. OS errors raised on the way name the file the user asked for, not the
temporary: a write that fails on a full disk says so about `data/zh_text_document.bin`,
which `megatron_core.cli.run` then prints as one sentence.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Callable, Iterator, Tuple


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Re-raise an OS error from inside as one about `path` (writes to an open file carry
    no file name at all, and a temporary's name means nothing to the user)."""
    try:
        yield
    except OSError as error:
        if error.errno is None or error.filename == path:
            raise
        raise OSError(error.errno, error.strerror, path) from error


def create_temporary(path: str) -> Tuple[BinaryIO, str]:
    """(open binary file, its name): a new temporary next to `path`."""
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=os.path.basename(path) + ".", suffix=".tmp")
    return os.fdopen(fd, "wb"), tmp


def publish(tmp: str, path: str) -> None:
    """Move a complete temporary to its final name, with the permissions open() gives
    (mkstemp makes 0600 files; other users of shared data must read them too)."""
    umask = os.umask(0)
    os.umask(umask)
    with naming(path):
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)


def remove_quietly(tmp: str) -> None:
    """Drop a temporary on the way out of a failure (which is the error worth reporting)."""
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


def write_atomically(path: str, write: Callable[[BinaryIO, str], None], durable: bool = False) -> None:
    """What `write(file, temporary_path)` writes, published as `path` (a writer may also write the
    temporary by its name). durable=True: the file is fsynced before the rename and its
    directory after it, so a crash or power loss leaves the old file or the whole new one."""
    f, tmp = create_temporary(path)
    try:
        with naming(path):
            with f:
                write(f, tmp)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
        publish(tmp, path)
        if durable:
            with naming(path):
                fsync_directory(path)
    except BaseException:
        remove_quietly(tmp)
        raise


def fsync_directory(path: str) -> None:
    """Make the entry of `path` in its directory durable (the rename itself)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
