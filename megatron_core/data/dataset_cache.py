"""On-disk cache of dataset index arrays, keyed by the md5 of what they were built from.

For a description such as {"class": "GPTDataset", "path": ..., "seq_length": 2048,
"content_md5": content_digest(lengths), ...}
the cache holds, in one directory:

    <Class>-<md5>-<name>.npy          one file per array (doc_idx, sample_idx, ...)
    <Class>-<md5>-description.json    the description itself, written last

Every file is written to a temporary name and renamed, and the description goes last,
so a reader that sees it sees complete arrays: ranks that build at the same time, or a
build that crashes halfway, never leave a half-written file under a final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Dict, Optional

import numpy as np

from megatron_core.atomic_files import write_atomically

logger = logging.getLogger(__name__)


def description_hash(description: dict) -> str:
    """md5 of the description as canonical JSON (sorted keys), so key order never matters."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def content_digest(*arrays: np.ndarray) -> str:
    """md5 of arrays' values in order (as little-endian int64, whatever their dtype).

    Index arrays depend on the sequence lengths and document boundaries they were built
    from, not on a dataset's name: putting this digest in a description means a corpus
    regenerated under the same name (same document count, even the same token count)
    never picks up an index built for the old one.
    """
    digest = hashlib.md5()
    for array in arrays:
        values = np.asarray(array)
        # in chunks: a billion-sequence index is hashed without a second copy in memory
        for start in range(0, len(values), 1 << 24):
            digest.update(values[start:start + (1 << 24)].astype("<i8").tobytes())
        digest.update(b"|")
    return digest.hexdigest()


class IndexCache:
    """The cache entry of one description inside `directory`."""

    def __init__(self, directory: str, description: dict, array_names):
        self.directory = directory
        self.description = description
        self.array_names = tuple(array_names)
        self.hash = description_hash(description)
        self.prefix = f"{description['class']}-{self.hash}"

    def path(self, name: str) -> str:
        suffix = "description.json" if name == "description" else f"{name}.npy"
        return os.path.join(self.directory, f"{self.prefix}-{suffix}")

    def is_complete(self) -> bool:
        return all(os.path.isfile(self.path(n)) for n in ("description",) + self.array_names)

    def load(self) -> Dict[str, np.ndarray]:
        # Memory-mapped: ranks on one node share the pages instead of each holding a copy.
        return {name: np.load(self.path(name), mmap_mode="r", allow_pickle=False)
                for name in self.array_names}

    def save(self, arrays: Dict[str, np.ndarray]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for name in self.array_names:
            write_atomically(self.path(name),
                              lambda f, _, a=arrays[name]: np.save(f, a, allow_pickle=False), durable=True)
        text = json.dumps(self.description, indent=2, sort_keys=True) + "\n"
        write_atomically(self.path("description"), lambda f, _: f.write(text.encode("utf-8")), durable=True)


def load_or_build(cache: Optional[IndexCache], build: Callable[[], Dict[str, np.ndarray]]):
    """The cached arrays, else `build()` saved to the cache; returns (arrays, was_cache_hit).

    With `cache=None`, or a directory that cannot be written, the arrays are built and
    kept in memory only (with a warning in the second case).
    """
    if cache is not None and cache.is_complete():
        logger.info("loading dataset indices from %s-*", os.path.join(cache.directory, cache.prefix))
        return cache.load(), True
    arrays = build()
    if cache is not None:
        try:
            cache.save(arrays)
        except OSError as err:
            logger.warning("could not write the dataset index cache in %s (%s); the indices "
                           "are kept in memory only. Pass a writable cache_dir "
                           "(--data-cache-path) to reuse them.", cache.directory, err)
        else:
            logger.info("saved dataset indices to %s-*", os.path.join(cache.directory, cache.prefix))
    return arrays, False
