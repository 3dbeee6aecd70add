"""GPT pretraining samples: documents back to back, cut into seq_length + 1 token windows.

The documents of a split (a range of sequences of an IndexedDataset, each ending in the
EOD token that preprocessing appended) are laid end to end, epoch after epoch, each epoch
in a fresh random order. Sample i is tokens [i*L, i*L + L + 1) of that stream, so
consecutive samples share one token: the last label of one is the first input of the next.

Three index arrays, built as Megatron-LM builds them so that runs are comparable:

* doc_idx     the document order over all epochs (int32);
* sample_idx  where each sample starts: (position in doc_idx, token offset), see index_helpers;
* shuffle_idx a permutation of the samples, so __getitem__(i) reads sample shuffle_idx[i].

They are cached on disk (see dataset_cache) under the md5 of everything they depend on.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Tuple

import numpy as np

from megatron_core.data.dataset_cache import IndexCache, content_digest, load_or_build
from megatron_core.data.index_helpers import build_sample_idx
from megatron_core.errors import DataError

logger = logging.getLogger(__name__)

# Megatron's rule: when the last epoch contributes fewer than this fraction of an epoch's
# samples, it is shuffled on its own, so that its few samples are not spread over the run
# while part of every document is missing from it.
SEPARATE_LAST_EPOCH_THRESHOLD = 0.80
INDEX_FORMAT_VERSION = 1


def default_cache_dir(path_prefix: str) -> str:
    """Next to the data: <data dir>/index-cache."""
    return os.path.join(os.path.dirname(os.path.abspath(path_prefix)), "index-cache")


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Fewest epochs whose tokens fill num_samples windows of seq_length + 1."""
    needed = num_samples * seq_length + 1
    return max(1, -(-needed // tokens_per_epoch))


def build_doc_idx(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                  separate_last_epoch: bool) -> np.ndarray:
    """Every document once per epoch, shuffled (the last epoch apart when asked)."""
    if separate_last_epoch and num_epochs > 1:
        first = build_doc_idx(documents, num_epochs - 1, rng, False)
        last = build_doc_idx(documents, 1, rng, False)
        return np.concatenate((first, last))
    doc_idx = np.tile(documents.astype(np.int32), num_epochs)
    rng.shuffle(doc_idx)
    return doc_idx


def build_shuffle_idx(num_first: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """Shuffle [0, num_first) and [num_first, total) separately, then join them."""
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_first, dtype=dtype)
    rng.shuffle(first)
    if num_first == total:
        return first
    last = np.arange(num_first, total, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


class GPTDataset:
    """Samples {"text": int64[seq_length + 1]} from sequences [start, stop) of a dataset.

    Args:
        indexed_dataset: an opened IndexedDataset (megatron_core.data.indexed_dataset).
        document_range: (start, stop) sequence numbers of this split. For data made
            without sentence splitting every sequence is one document.
        num_samples: samples wanted; enough epochs are taken to provide them (the
            dataset may hold a few more). None means one epoch.
        seq_length: tokens per sample input; samples carry seq_length + 1 tokens.
        seed: seed of the epoch and sample shuffles.
        cache_dir: where the index arrays are cached; default <data dir>/index-cache.
        split_name: "train", "valid" or "test"; part of the cache key and the logs.
    """

    def __init__(self, indexed_dataset, document_range: Tuple[int, int],
                 num_samples: Optional[int], seq_length: int, seed: int,
                 cache_dir: Optional[str] = None, split_name: str = "train"):
        self.indexed_dataset = indexed_dataset
        self.path_prefix = os.path.abspath(indexed_dataset.path_prefix)
        start, stop = (int(x) for x in document_range)
        if not 0 <= start < stop <= len(indexed_dataset):
            raise DataError(
                f"the {split_name} split of {self.path_prefix} would hold sequences "
                f"[{start}, {stop}) but the dataset has {len(indexed_dataset)}; give it a "
                f"larger share in --split or use more data.")
        if seq_length < 1:
            raise DataError(f"seq_length is {seq_length}; set --seq-length to a positive number.")
        if num_samples is not None and num_samples < 0:
            raise DataError(f"num_samples is {num_samples}; ask for zero or more samples.")
        self.document_range = (start, stop)
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.split_name = split_name
        self.num_samples = num_samples

        sizes = indexed_dataset.sequence_lengths
        self.tokens_per_epoch = int(np.sum(sizes[start:stop], dtype=np.int64))
        if self.tokens_per_epoch < 2:
            raise DataError(
                f"the {split_name} split of {self.path_prefix} (sequences [{start}, {stop})) "
                f"holds {self.tokens_per_epoch} tokens, too few for even one sample; give it "
                f"a larger share in --split or use more data.")

        self.description = {
            "class": type(self).__name__,
            "format_version": INDEX_FORMAT_VERSION,
            "path_prefix": self.path_prefix,
            "split": split_name,
            "document_range": [start, stop],
            # The indices depend only on these lengths, in this order: keyed on them, a
            # dataset regenerated under the same name never reuses a stale index.
            "num_sequences": len(indexed_dataset),
            "tokens_in_range": self.tokens_per_epoch,
            "content_md5": content_digest(sizes[start:stop]),
            "seq_length": self.seq_length,
            "seed": self.seed,
            "num_samples": num_samples,
            "add_extra_token": 1,
            "separate_last_epoch_threshold": SEPARATE_LAST_EPOCH_THRESHOLD,
        }
        cache = IndexCache(cache_dir or default_cache_dir(self.path_prefix), self.description,
                           ("doc_idx", "sample_idx", "shuffle_idx"))
        self.cache_files_prefix = os.path.join(cache.directory, cache.prefix)
        arrays, self.cache_hit = load_or_build(cache, self._build_indices)
        self.doc_idx = arrays["doc_idx"]
        self.sample_idx = arrays["sample_idx"]
        self.shuffle_idx = arrays["shuffle_idx"]
        self.unique_hash = cache.hash

    def _build_indices(self) -> Dict[str, np.ndarray]:
        start, stop = self.document_range
        L, tokens = self.seq_length, self.tokens_per_epoch
        num_epochs = 1 if self.num_samples is None else num_epochs_needed(tokens, L, self.num_samples)
        separate_last_epoch = False
        if num_epochs > 1:
            samples_before_last = ((num_epochs - 1) * tokens - 1) // L
            samples_from_last = self.num_samples - samples_before_last
            samples_per_epoch = (tokens - 1) // L
            separate_last_epoch = samples_from_last < int(SEPARATE_LAST_EPOCH_THRESHOLD * samples_per_epoch)
        logger.info("building %s indices for %s %s: %d epochs, separate last epoch: %s",
                    type(self).__name__, self.path_prefix, self.split_name, num_epochs,
                    separate_last_epoch)
        rng = np.random.RandomState(self.seed)
        documents = np.arange(start, stop, dtype=np.int32)
        doc_idx = build_doc_idx(documents, num_epochs, rng, separate_last_epoch)
        sizes = np.asarray(self.indexed_dataset.sequence_lengths)
        if len(doc_idx) * 2 > len(sizes):  # read the whole mmap once rather than randomly
            sizes = np.array(sizes)
        sample_idx = build_sample_idx(sizes, doc_idx, L, num_epochs, tokens)
        total = sample_idx.shape[0] - 1
        num_first = samples_before_last if separate_last_epoch else total
        shuffle_idx = build_shuffle_idx(num_first, total, rng)
        return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx}

    def __len__(self) -> int:
        return self.sample_idx.shape[0] - 1

    def sample_tokens(self, sample: int) -> np.ndarray:
        """Tokens of unshuffled sample `sample` (position in the concatenated stream)."""
        pos_begin, offset_begin = (int(x) for x in self.sample_idx[sample])
        pos_end, offset_end = (int(x) for x in self.sample_idx[sample + 1])
        get = self.indexed_dataset.get
        if pos_begin == pos_end:
            return get(int(self.doc_idx[pos_begin]), offset_begin,
                       offset_end - offset_begin + 1).astype(np.int64)
        if hasattr(self.indexed_dataset, "gather"):
            # one vectorized gather over all documents of the sample (a 2048-token sample
            # of short news paragraphs spans tens of them)
            return self.indexed_dataset.gather(self.doc_idx[pos_begin:pos_end + 1],
                                               offset_begin, offset_end + 1)
        parts = [get(int(self.doc_idx[pos_begin]), offset_begin)]
        parts.extend(get(int(self.doc_idx[p])) for p in range(pos_begin + 1, pos_end))
        parts.append(get(int(self.doc_idx[pos_end]), 0, offset_end + 1))
        return np.concatenate(parts, dtype=np.int64)

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"sample {idx} out of range for a GPTDataset of {n} samples")
        return {"text": self.sample_tokens(int(self.shuffle_idx[idx]))}
