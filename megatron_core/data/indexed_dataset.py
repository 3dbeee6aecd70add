"""Megatron-LM's memory-mapped indexed dataset (`MMIDIDX`, version 1), read and written.

A dataset is a pair of files sharing a prefix:

* ``{prefix}.bin`` holds the token ids of every sequence back to back, in one dtype;
* ``{prefix}.idx`` says where each sequence starts and which sequences form a document.

``.idx`` layout, all little-endian (byte-compatible with Megatron-LM in both directions)::

    9 bytes   magic  b"MMIDIDX\\x00\\x00"
    uint64    version (always 1)
    uint8     dtype code of the .bin tokens (see _DTYPE_BY_CODE)
    uint64    sequence count  N
    uint64    document count  D  (= number of entries in the document index, docs + 1)
    int32[N]  sequence lengths, in tokens
    int64[N]  sequence pointers, byte offsets into .bin
    int64[D]  document index: sequence number where each document starts, then N

Megatron's multimodal variant appends int8[N] sequence modes; we read past them.
"""
from __future__ import annotations

import os
import struct
from array import array
from typing import Optional, Sequence, Union

import numpy as np

from megatron_core.atomic_files import create_temporary, naming, publish, remove_quietly
from megatron_core.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# magic + version + dtype code + sequence count + document count
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8

# Megatron's numeric codes; they are part of the file format and must never change.
_DTYPE_BY_CODE = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
_CODE_BY_DTYPE = {dtype: code for code, dtype in _DTYPE_BY_CODE.items()}


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def best_dtype(vocab_size: Optional[int]) -> np.dtype:
    """Smallest token dtype Megatron would pick: uint16 below 65500 ids, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def dtype_code(dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype not in _CODE_BY_DTYPE:
        raise DataError(
            f"dtype {dtype} cannot be stored in an MMIDIDX dataset; use one of "
            f"{', '.join(str(d) for d in _CODE_BY_DTYPE)}."
        )
    return _CODE_BY_DTYPE[dtype]


def _to_numpy(tokens) -> np.ndarray:
    if isinstance(tokens, np.ndarray):
        return tokens
    if hasattr(tokens, "detach"):  # torch.Tensor, without importing torch here
        return tokens.detach().cpu().numpy()
    return np.asarray(tokens)


class _Index:
    """The parsed and validated contents of one `.idx` file, memory-mapped."""

    def __init__(self, idx_path: str):
        self.path = idx_path
        if not os.path.isfile(idx_path):
            raise DataError(
                f"{idx_path} does not exist; pass the dataset prefix without .bin/.idx "
                f"(e.g. data/corpus_text_document) and check that preprocessing finished."
            )
        file_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if header[: len(MAGIC)] != MAGIC[: len(header)]:
            raise DataError(
                f"{idx_path} is not a Megatron MMIDIDX index (its first bytes are "
                f"{header[:len(MAGIC)]!r}, expected {MAGIC!r}); regenerate it with "
                f"tools/preprocess_data.py."
            )
        if len(header) < HEADER_SIZE:
            raise DataError(
                f"{idx_path} is truncated: {file_size} bytes is shorter than the "
                f"{HEADER_SIZE}-byte header; regenerate it with tools/preprocess_data.py."
            )
        (version,) = struct.unpack_from("<Q", header, len(MAGIC))
        if version != VERSION:
            raise DataError(
                f"{idx_path} has MMIDIDX version {version}, but only version {VERSION} "
                f"is supported; regenerate it with tools/preprocess_data.py."
            )
        (code,) = struct.unpack_from("<B", header, len(MAGIC) + 8)
        if code not in _DTYPE_BY_CODE:
            raise DataError(
                f"{idx_path} names unknown token dtype code {code} (known: 1-8); "
                f"the file is corrupt or from an incompatible tool."
            )
        self.dtype = _DTYPE_BY_CODE[code]
        self.sequence_count, self.document_count = struct.unpack_from(
            "<QQ", header, len(MAGIC) + 9)

        n, d = self.sequence_count, self.document_count
        expected = HEADER_SIZE + 4 * n + 8 * n + 8 * d
        # Megatron's multimodal datasets append one int8 mode per sequence.
        if file_size not in (expected, expected + n):
            problem = "truncated" if file_size < expected else "longer than its header says"
            raise DataError(
                f"{idx_path} is {problem}: the header promises {n} sequences and {d} "
                f"document-index entries ({expected} bytes) but the file has {file_size} "
                f"bytes; regenerate it with tools/preprocess_data.py."
            )
        if d < 1:
            raise DataError(
                f"{idx_path} has an empty document index (it must start with 0); "
                f"the file is corrupt, regenerate it."
            )

        self._mmap = np.memmap(idx_path, mode="r", dtype=np.uint8)
        buf = memoryview(self._mmap)
        self.sequence_lengths = np.frombuffer(buf, np.int32, n, HEADER_SIZE)
        self.sequence_pointers = np.frombuffer(buf, np.int64, n, HEADER_SIZE + 4 * n)
        self.document_indices = np.frombuffer(buf, np.int64, d, HEADER_SIZE + 12 * n)
        # Only the ends are checked here, so opening costs the same for any corpus size;
        # verify() checks every entry.
        doc = self.document_indices
        if doc[0] != 0 or not 0 <= doc[-1] <= n:
            raise self._bad_document_index()

    def _bad_document_index(self) -> DataError:
        return DataError(
            f"{self.path} has an invalid document index (it must rise from 0 to at most the "
            f"sequence count {self.sequence_count}); the file is corrupt, regenerate it.")

    def data_size(self) -> int:
        """Bytes of .bin that the index describes (its last sequence's end)."""
        if self.sequence_count == 0:
            return 0
        return int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize

    def verify_document_index(self) -> None:
        """Every document-index entry in [0, sequence count] and none below the one before."""
        doc = self.document_indices
        bad = (doc < 0) | (doc > self.sequence_count)
        bad[1:] |= doc[1:] < doc[:-1]
        if doc[0] != 0 or bad.any():
            raise self._bad_document_index()


class _SequenceChecks:
    """Whether index entries agree with their neighbours and with the .bin, one or all.

    Entry i is sound when its length is not negative, it starts where entry i - 1 ends
    (entry 0 at byte 0) and ends where entry i + 1 starts (the last one at the end of the
    .bin). A read checks only the entries it reads, in O(1) each; `first_bad_entry` checks
    all of them, vectorised. Both report through `damage`, so a damaged index gives the
    same sentence whichever finds it.
    """

    def __init__(self, index: _Index, bin_path: str, bin_size: int):
        self.index, self.bin_path, self.bin_size = index, bin_path, bin_size
        self.itemsize = index.dtype.itemsize

    def check(self, i: int) -> None:
        index = self.index
        pointer = int(index.sequence_pointers[i])
        length = int(index.sequence_lengths[i])
        end = pointer + length * self.itemsize
        next_start = (self.bin_size if i + 1 == index.sequence_count
                      else int(index.sequence_pointers[i + 1]))
        # (entry 0 starting at byte 0 is checked once, when the dataset is opened)
        if length < 0 or pointer < 0 or end != next_start or end > self.bin_size:
            raise self.damage(i)

    def check_many(self, entries: np.ndarray, pointers: np.ndarray, lengths: np.ndarray) -> None:
        """`check` for many entries at once (the sequences of one GPT sample), given their
        pointers and lengths (int64) as the caller already read them. Few numpy calls on
        the way through; anything that looks wrong is settled by `check`, entry by entry
        (the last sequence, whose end is the .bin's and not a pointer, always comes here)."""
        index = self.index
        ends = lengths * self.itemsize
        ends += pointers
        following = entries + 1
        np.minimum(following, index.sequence_count - 1, out=following)
        mismatched = ends != index.sequence_pointers[following]
        if mismatched.any() or (lengths | pointers).min() < 0 or ends.max() > self.bin_size:
            # a negative entry counts from the end, as in numpy
            for entry in entries[mismatched | (lengths < 0) | (pointers < 0) | (ends > self.bin_size)]:
                self.check(int(entry) % index.sequence_count)

    def first_bad_entry(self) -> Optional[int]:
        index = self.index
        if index.sequence_count == 0:
            return None
        pointers = index.sequence_pointers
        ends = pointers + index.sequence_lengths.astype(np.int64) * self.itemsize
        expected = np.empty_like(ends)
        expected[:-1] = pointers[1:]
        expected[-1] = self.bin_size
        bad = (index.sequence_lengths < 0) | (pointers < 0) | (ends > self.bin_size) | (ends != expected)
        bad[0] |= pointers[0] != 0
        return int(np.argmax(bad)) if bad.any() else None

    def damage(self, i: int) -> DataError:
        """The sentence for a damaged entry i: what the index says, and why it cannot be."""
        index = self.index
        pointer = int(index.sequence_pointers[i])
        length = int(index.sequence_lengths[i])
        end = pointer + length * self.itemsize
        if length < 0:
            problem = "a length cannot be negative"
        elif pointer < 0 or pointer > self.bin_size or end > self.bin_size:
            problem = f"that runs past the end of the {self.bin_size}-byte .bin"
        elif i == 0 and pointer != 0:
            problem = "the first sequence must start at byte 0"
        elif i + 1 == index.sequence_count:
            problem = f"the last sequence must end at the end of the {self.bin_size}-byte .bin"
        else:
            problem = (f"sequence {i + 1} starts at byte {int(index.sequence_pointers[i + 1])}, "
                       f"not where this one ends")
        return DataError(
            f"{index.path} is damaged at sequence {i}: it says the sequence starts at byte "
            f"{pointer} of {self.bin_path} and has {length} tokens of {index.dtype} (ending at "
            f"byte {end}), but {problem}; regenerate the dataset with tools/preprocess_data.py.")


class IndexedDataset:
    """Read-only view of `{prefix}.bin` / `{prefix}.idx`; sequences come back as numpy arrays.

    Arrays returned are read-only views into the memory map: copy them before editing.
    """

    def __init__(self, path_prefix: str):
        self.path_prefix = path_prefix
        self._open()

    def _open(self) -> None:
        prefix = self.path_prefix
        self._index = _Index(index_file_path(prefix))
        bin_path = data_file_path(prefix)
        if not os.path.isfile(bin_path):
            raise DataError(
                f"{bin_path} does not exist but its index {index_file_path(prefix)} does; "
                f"copy both files of the dataset, or regenerate them.")
        bin_size = os.path.getsize(bin_path)
        self._checks = _SequenceChecks(self._index, bin_path, bin_size)
        count = self._index.sequence_count
        if count and int(self._index.sequence_lengths[-1]) < 0:
            raise self._checks.damage(count - 1)
        if count and int(self._index.sequence_pointers[0]) != 0:
            raise self._checks.damage(0)
        expected = self._index.data_size()
        if bin_size != expected:
            raise DataError(
                f"{bin_path} has {bin_size} bytes but its index says {expected} "
                f"({count} sequences of {self._index.dtype}); the .bin and .idx do not belong "
                f"together or one is truncated, regenerate them.")
        if bin_size == 0:  # mmap refuses empty files
            self._bin = np.empty(0, dtype=np.uint8)
        else:
            self._bin = np.memmap(bin_path, mode="r", dtype=np.uint8)
        self._bin_buffer = memoryview(self._bin)
        self._tokens = np.frombuffer(self._bin_buffer, dtype=self._index.dtype)

    def verify(self) -> "IndexedDataset":
        """Check every entry of the index (see _SequenceChecks), the document index, and
        that the .bin still has the size it had when opened; raises one DataError naming
        the file and the first bad entry. Reads check their own entries anyway: this
        finds damage before a long run reaches it. Returns the dataset."""
        checks = self._checks
        size_now = os.path.getsize(checks.bin_path) if os.path.isfile(checks.bin_path) else None
        if size_now != checks.bin_size:
            raise DataError(
                f"{checks.bin_path} has changed since it was opened ({checks.bin_size} bytes, now "
                f"{'missing' if size_now is None else f'{size_now} bytes'}); something is "
                f"rewriting or truncating it, regenerate the dataset and reopen it.")
        bad = checks.first_bad_entry()
        if bad is not None:
            raise checks.damage(bad)
        self._index.verify_document_index()
        return self

    # Memory maps do not pickle cheaply (numpy copies them): reopen by path instead,
    # so the dataset can be handed to DataLoader worker processes.
    def __getstate__(self):
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state):
        self.path_prefix = state["path_prefix"]
        self._open()

    @staticmethod
    def exists(path_prefix: str) -> bool:
        return os.path.isfile(index_file_path(path_prefix)) and os.path.isfile(
            data_file_path(path_prefix))

    def __len__(self) -> int:
        return self._index.sequence_count

    @property
    def dtype(self) -> np.dtype:
        return self._index.dtype

    @property
    def sequence_lengths(self) -> np.ndarray:
        return self._index.sequence_lengths

    @property
    def sequence_pointers(self) -> np.ndarray:
        return self._index.sequence_pointers

    @property
    def document_indices(self) -> np.ndarray:
        return self._index.document_indices

    @property
    def num_documents(self) -> int:
        return len(self._index.document_indices) - 1

    def _check_index(self, idx: int) -> int:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"sequence {idx} out of range for {self.path_prefix} ({n} sequences)")
        return idx

    def _read(self, byte_offset: int, count: int) -> np.ndarray:
        return np.frombuffer(self._bin_buffer, dtype=self.dtype, count=count, offset=byte_offset)

    def __getitem__(self, idx: Union[int, np.integer, slice]):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if start >= stop:
                return []
            lengths = self.sequence_lengths[start:stop]
            self._checks.check_many(np.arange(start, stop), self.sequence_pointers[start:stop],
                                    lengths.astype(np.int64))
            # One contiguous read, then split: sequences of a range are adjacent in .bin.
            flat = self._read(int(self.sequence_pointers[start]), int(lengths.sum()))
            return np.split(flat, np.cumsum(lengths[:-1]))
        if isinstance(idx, (int, np.integer)):
            i = self._check_index(int(idx))
            self._checks.check(i)
            return self._read(int(self.sequence_pointers[i]), int(self.sequence_lengths[i]))
        raise TypeError(f"IndexedDataset indices must be int or slice, not {type(idx).__name__}")

    @property
    def tokens(self) -> np.ndarray:
        """Every token of the .bin as one flat read-only array (a view of the memory map)."""
        return self._tokens

    def gather(self, sequences, first_offset: int = 0, last_length: Optional[int] = None,
               out_dtype=np.int64) -> np.ndarray:
        """Sequences `sequences` back to back as one array, in one numpy gather: the first
        one from its token `first_offset` on, the last one up to (not including) its token
        `last_length` (None: to its end). This is how a GPT sample that spans many short
        documents is read without a Python loop over them."""
        index = self._index
        sequences = np.asarray(sequences)
        starts = index.sequence_pointers[sequences]
        lengths = index.sequence_lengths[sequences].astype(np.int64)
        self._checks.check_many(sequences, starts, lengths)
        starts //= index.dtype.itemsize
        last = int(lengths[-1])
        if last_length is not None:
            if not 0 <= last_length <= last:
                raise IndexError(f"last_length {last_length} is outside the last sequence "
                                 f"gathered, which has {last} tokens")
            lengths[-1] = last_length
        starts[0] += first_offset
        lengths[0] -= first_offset
        if first_offset < 0 or lengths[0] < 0:
            raise IndexError(f"first_offset {first_offset} is outside the first sequence "
                             f"gathered, or past the last_length of a single sequence")
        ends = np.cumsum(lengths)
        # token j of the output sits at .bin token j + (start of its sequence - its start in the output)
        positions = np.repeat(starts - (ends - lengths), lengths)
        positions += np.arange(ends[-1])
        return self._tokens[positions].astype(out_dtype, copy=False)

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence `idx`, reading only those bytes."""
        i = self._check_index(int(idx))
        self._checks.check(i)
        size = int(self.sequence_lengths[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"tokens [{offset}, {offset + length}) are outside sequence {i} of "
                f"{self.path_prefix}, which has {size} tokens")
        pointer = int(self.sequence_pointers[i]) + offset * self.dtype.itemsize
        return self._read(pointer, length)


class IndexedDatasetBuilder:
    """Streams sequences into a new `.bin` and writes the `.idx` on `finalize`.

    Tokens go straight to disk; only one int32 length per sequence and one int64 per
    document stay in memory. Both files are written under temporary names next to the
    targets and renamed in `finalize`, so a crash never leaves a half-written file under
    the final name. Use it as a context manager (or call `abort`) to remove the
    temporaries when something fails.
    """

    def __init__(self, bin_path: str, dtype=np.int32):
        self.bin_path = bin_path
        self.dtype = np.dtype(dtype)
        self._code = dtype_code(self.dtype)
        self._itemsize = self.dtype.itemsize
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            self._min, self._max = int(info.min), int(info.max)
        directory = os.path.dirname(os.path.abspath(bin_path))
        if not os.path.isdir(directory):
            raise DataError(f"output directory {directory} does not exist; create it first.")
        self._data, self._tmp_bin = create_temporary(bin_path)
        self._tmp_idx: Optional[str] = None
        self._lengths = array("i")  # int32, as stored in the index
        self._doc_indices = array("q", [0])
        self._finalized = False

    # -- writing -----------------------------------------------------------------------

    def _as_dtype(self, tokens) -> np.ndarray:
        arr = _to_numpy(tokens).reshape(-1)
        if arr.dtype == self.dtype:
            return arr
        # Refuse silent wrap-around, e.g. ids >= 65536 into uint16.
        if self.dtype.kind in "iu" and arr.size and arr.dtype.kind in "iub":
            low, high = int(arr.min()), int(arr.max())
            if low < self._min or high > self._max:
                bad = high if high > self._max else low
                raise DataError(
                    f"token id {bad} does not fit the dataset dtype {self.dtype} of "
                    f"{self.bin_path}; build it with dtype=best_dtype(vocab_size) or np.int32.")
        return arr.astype(self.dtype, copy=False)

    def _write(self, arr: np.ndarray) -> None:
        with naming(self.bin_path):
            self._data.write(np.ascontiguousarray(arr).data)

    def add_item(self, tokens) -> None:
        """Append one sequence; it joins the current document until `end_document`."""
        arr = self._as_dtype(tokens)
        self._write(arr)
        self._lengths.append(arr.size)

    def end_document(self) -> None:
        """Close the current document (the sequences added since the last one)."""
        self._doc_indices.append(len(self._lengths))

    def add_document(self, tokens, lengths: Sequence[int]) -> None:
        """Append a whole document: flat `tokens` split into sequences of `lengths`."""
        arr = self._as_dtype(tokens)
        lengths = [int(x) for x in lengths]
        if sum(lengths) != arr.size:
            raise ValueError(
                f"add_document got {arr.size} tokens but lengths sum to {sum(lengths)}")
        self._write(arr)
        self._lengths.extend(lengths)
        self.end_document()

    def add_documents(self, tokens, lengths, sequences_per_document) -> None:
        """Append many documents at once (one write): flat `tokens`, one length per
        sequence, and how many of those sequences each document has."""
        arr = self._as_dtype(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        counts = np.asarray(sequences_per_document, dtype=np.int64)
        if int(lengths.sum()) != arr.size or int(counts.sum()) != lengths.size:
            raise ValueError(
                f"add_documents got {arr.size} tokens, {lengths.size} lengths summing to "
                f"{int(lengths.sum())} and document counts summing to {int(counts.sum())}")
        self._close_open_document()
        self._write(arr)
        first = len(self._lengths)
        self._lengths.frombytes(lengths.astype(np.int32).tobytes())
        self._doc_indices.frombytes((first + np.cumsum(counts)).astype(np.int64).tobytes())

    def _close_open_document(self) -> None:
        # Sequences added without end_document would be unreachable through the
        # document index; make them a document of their own.
        if self._doc_indices[-1] != len(self._lengths):
            self.end_document()

    def add_index(self, path_prefix: str) -> None:
        """Append a whole existing dataset (its sequences and documents), e.g. to merge."""
        self._close_open_document()
        index = _Index(index_file_path(path_prefix))
        if index.dtype != self.dtype:
            raise DataError(
                f"{index_file_path(path_prefix)} stores {index.dtype} tokens but the merged "
                f"dataset is {self.dtype}; merge only datasets built with the same tokenizer.")
        bin_path = data_file_path(path_prefix)
        if not os.path.isfile(bin_path) or os.path.getsize(bin_path) != index.data_size():
            raise DataError(
                f"{bin_path} is missing or does not match its index; regenerate that dataset.")
        offset = len(self._lengths)
        # frombytes: no Python int per sequence, so merging billions of sequences is cheap
        self._lengths.frombytes(np.ascontiguousarray(index.sequence_lengths, np.int32).tobytes())
        self._doc_indices.frombytes((index.document_indices[1:] + offset).astype(np.int64).tobytes())
        del index
        with naming(bin_path):
            src = open(bin_path, "rb")
        with src:
            while True:
                with naming(bin_path):
                    chunk = src.read(16 << 20)
                if not chunk:
                    break
                self._write(np.frombuffer(chunk, np.uint8))

    # -- finishing ---------------------------------------------------------------------

    @property
    def num_sequences(self) -> int:
        return len(self._lengths)

    @property
    def num_documents(self) -> int:
        return len(self._doc_indices) - 1

    def finalize(self, idx_path: str) -> None:
        """Write the index and move both files to their final names."""
        self._close_open_document()
        with naming(self.bin_path):
            self._data.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self._itemsize
        doc_indices = np.frombuffer(self._doc_indices, dtype=np.int64)

        f, self._tmp_idx = create_temporary(idx_path)
        with naming(idx_path), f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", self._code))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(doc_indices)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_indices.tobytes())
        # .bin first: a reader only trusts a .bin once an .idx that matches it exists.
        publish(self._tmp_bin, self.bin_path)
        publish(self._tmp_idx, idx_path)
        self._finalized = True

    def abort(self) -> None:
        """Drop the temporaries; nothing appears under the final names."""
        if self._finalized:
            return
        try:
            self._data.close()
        except OSError:  # the write that failed fails again on the way out
            pass
        for tmp in (self._tmp_bin, self._tmp_idx):
            if tmp:
                remove_quietly(tmp)
        self._finalized = True

    def __enter__(self) -> "IndexedDatasetBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()



# ---------------------------------------------------------------------------------------
# Merging


def find_datasets(directory: str) -> list:
    """Prefixes of the datasets in `directory` (each `.idx` with its `.bin`), sorted by name."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory} is not a directory; pass a directory of .bin/.idx "
                        f"pairs or a list of dataset prefixes.")
    prefixes = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".idx"):
            continue
        prefix = os.path.join(directory, name[: -len(".idx")])
        if not os.path.isfile(data_file_path(prefix)):
            raise DataError(f"{index_file_path(prefix)} has no {os.path.basename(data_file_path(prefix))} "
                            f"next to it; copy the .bin too or move the lone .idx away.")
        prefixes.append(prefix)
    return prefixes


def verify_datasets(prefixes: Sequence[str]) -> None:
    """Check every index entry of every dataset (IndexedDataset.verify): the check behind
    the `--verify` flag of the tools and entry points that read datasets."""
    for prefix in prefixes:
        IndexedDataset(prefix).verify()


def merge_datasets(prefixes: Sequence[str], output_prefix: str,
                   verify: bool = True) -> "IndexedDataset":
    """Concatenate datasets (sequences, lengths and documents, in the given order) into a
    new dataset at `output_prefix`, written under temporary names and renamed at the end.
    All inputs must share one token dtype (the same tokenizer). `verify` (on by
    default) checks every index entry of the inputs first: the merge rebuilds pointers from
    the lengths it copies, so a damaged input would otherwise become a consistent, wrong result."""
    prefixes = [str(p) for p in prefixes]
    if not prefixes:
        raise DataError("nothing to merge: no datasets were given (or the directory has no "
                        ".idx files).")
    out_abs = os.path.abspath(output_prefix)
    for prefix in prefixes:
        if os.path.abspath(prefix) == out_abs:
            raise DataError(f"--output-prefix {output_prefix} is also an input; write the merged "
                            f"dataset under another prefix.")
    indices = [_Index(index_file_path(p)) for p in prefixes]  # validates every input first
    dtypes = {index.dtype for index in indices}
    if len(dtypes) > 1:
        first = indices[0]
        other = next(index for index in indices if index.dtype != first.dtype)
        raise DataError(
            f"cannot merge {first.path} ({first.dtype} tokens) with {other.path} ({other.dtype} "
            f"tokens); merge only datasets made with the same tokenizer.")
    for prefix, index in zip(prefixes, indices):
        bin_path = data_file_path(prefix)
        if not os.path.isfile(bin_path) or os.path.getsize(bin_path) != index.data_size():
            raise DataError(f"{bin_path} is missing or does not match its index; regenerate "
                            f"that dataset before merging.")
    dtype = indices[0].dtype
    del indices
    if verify:
        verify_datasets(prefixes)
    with IndexedDatasetBuilder(data_file_path(output_prefix), dtype=dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize(index_file_path(output_prefix))
    return IndexedDataset(output_prefix)
