"""Checkpoint files opened as memory maps, reopened once enough of them has been read.

torch.load(mmap=True, weights_only=True) unpickles only the small index of a file; its
tensors are views of the mapped file and a page is read when a slice touches it. Pages
once touched stay resident (and count in the process's RSS) as long as the mapping
lives, so a reader that walks a whole checkpoint would end up holding all of it. Here
the mappings are dropped and reopened after `budget_bytes` have been read through them:
resident memory stays about one budget, whatever the checkpoint's size.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from ..file_io import load_file

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024


class LazyFiles:
    def __init__(self, transform: Optional[Callable[[dict], dict]] = None, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.transform = transform or (lambda state: state)
        self.budget_bytes = budget_bytes
        self._open: Dict[str, dict] = {}
        self._read = 0

    def get(self, path: str, allow: Sequence = ()) -> dict:
        """`path`'s state, mapped; `allow`: classes its pickle may name (file_io.load_file)."""
        if path not in self._open:
            self._open[path] = self.transform(load_file(path, mmap=True, allow=allow))
        return self._open[path]

    def count(self, nbytes: int) -> None:
        """Note `nbytes` read through the mappings; past the budget every mapping is dropped
        (callers must not keep views of a file across a count)."""
        self._read += nbytes
        if self._read >= self.budget_bytes:
            self.release()

    def release(self) -> None:
        self._open.clear()
        self._read = 0
