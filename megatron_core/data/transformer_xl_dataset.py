"""Transformer-XL samples: `rows` parallel streams of text, each read segment after segment.

Segment memory only helps when segment k+1 of a batch row continues the text of segment k
of the same row, as in Transformer-XL's ordered iterator and Chinese-Transformer-XL. So
the documents of a split are laid end to end (each epoch in a fresh order fixed by the
seed) and the token stream is cut into `rows` equal streams; stream j is read in windows
of seq_length + 1 tokens that overlap by one (the last label of a window is the first
input of the next):

    sample idx = k * rows + j   ->   stream j, tokens [k * L, k * L + L + 1) of it

With `rows` = the global batch size, Megatron's pretraining sampler gives global batch k
the samples [k * rows, (k + 1) * rows), so the row at a fixed (data-parallel rank,
micro-batch, position) is the same stream j at every iteration, whatever the
data-parallel and micro-batch sizes, and iteration k + 1 continues its text.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from megatron_core.errors import DataError
from megatron_core.data.gpt_dataset import build_doc_idx


class TransformerXLDataset:
    """`num_samples` segments {"text": int64[seq_length + 1]} of `rows` streams; see the module docstring.

    `document_range` is (start, stop) sequences of `indexed_dataset` (one split).
    """

    def __init__(self, indexed_dataset, document_range: Tuple[int, int], num_samples: int,
                 seq_length: int, rows: int, seed: int, split_name: str = "train"):
        start, stop = (int(x) for x in document_range)
        name = os.path.abspath(getattr(indexed_dataset, "path_prefix", "the dataset"))
        if not 0 <= start < stop <= len(indexed_dataset):
            raise DataError(f"the {split_name} split of {name} would hold sequences [{start}, {stop}) but the "
                            f"dataset has {len(indexed_dataset)}; give it a larger share in --split.")
        if seq_length < 1 or rows < 1 or num_samples < 0:
            raise DataError(f"a Transformer-XL dataset needs seq_length >= 1 and rows >= 1 and num_samples >= 0, "
                            f"got {seq_length}, {rows}, {num_samples}.")
        self.indexed_dataset = indexed_dataset
        self.seq_length, self.rows, self.split_name = int(seq_length), int(rows), split_name
        self.segments_per_row = max(1, -(-int(num_samples) // self.rows))
        # Each stream needs segments * L + 1 tokens; take whole epochs until all streams have them.
        needed = self.rows * (self.segments_per_row * self.seq_length + 1)
        sizes = np.asarray(indexed_dataset.sequence_lengths, dtype=np.int64)
        tokens_per_epoch = int(sizes[start:stop].sum())
        if tokens_per_epoch < 1:
            raise DataError(f"the {split_name} split of {name} holds no tokens; give it a larger share in --split.")
        num_epochs = -(-needed // tokens_per_epoch)
        rng = np.random.RandomState(seed % 2**32)
        self.doc_idx = build_doc_idx(np.arange(start, stop, dtype=np.int32), num_epochs, rng, False)
        # doc_starts[p]: offset in the stream of the first token of document doc_idx[p]
        self.doc_starts = np.concatenate(([0], np.cumsum(sizes[self.doc_idx])))
        self.row_length = int(self.doc_starts[-1]) // self.rows

    def __len__(self) -> int:
        return self.rows * self.segments_per_row

    def stream_tokens(self, begin: int, count: int) -> np.ndarray:
        """`count` tokens of the concatenated document stream from offset `begin`."""
        first = int(np.searchsorted(self.doc_starts, begin, side="right")) - 1
        parts, offset = [], begin - int(self.doc_starts[first])
        while count > 0:
            doc = int(self.doc_idx[first])
            take = min(count, int(self.doc_starts[first + 1] - self.doc_starts[first]) - offset)
            parts.append(self.indexed_dataset.get(doc, offset, take))
            count -= take
            first, offset = first + 1, 0
        return np.concatenate(parts).astype(np.int64)

    def position(self, idx: int) -> Tuple[int, int]:
        """(stream, segment) of sample `idx`."""
        segment, row = divmod(int(idx), self.rows)
        return row, segment

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for a TransformerXLDataset of {len(self)} samples")
        row, segment = self.position(idx)
        begin = row * self.row_length + segment * self.seq_length
        return {"text": self.stream_tokens(begin, self.seq_length + 1)}


def check_transformer_xl_batch(rampup_batch_size: Optional[tuple]) -> None:
    """Rows are streams: a global batch that grows would start rows in mid-stream."""
    if rampup_batch_size is not None:
        raise DataError("Transformer-XL reads each batch row as one continuing text stream, so the global batch "
                        "must stay fixed; drop --rampup-batch-size.")
