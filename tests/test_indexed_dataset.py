"""The MMIDIDX reader/writer: round trips, Megatron's exact bytes, merging, bad files."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from megatron_core.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    best_dtype,
    data_file_path,
    index_file_path,
)
from megatron_core.errors import DataError

pytestmark = pytest.mark.quick

DOCS = [  # each document is a list of sequences
    [[5, 6, 7], [8]],
    [[1, 2, 3, 4, 65000]],
    [[], [9, 10]],
]


def build(prefix, docs=DOCS, dtype=np.uint16):
    builder = IndexedDatasetBuilder(data_file_path(prefix), dtype=dtype)
    for doc in docs:
        for seq in doc:
            builder.add_item(seq)
        builder.end_document()
    builder.finalize(index_file_path(prefix))
    return IndexedDataset(prefix)


def megatron_bytes(docs, dtype_code, itemsize):
    """The .idx Megatron-LM writes for `docs`, built by hand from its documented layout."""
    lengths = [len(s) for d in docs for s in d]
    pointers, pos = [], 0
    for n in lengths:
        pointers.append(pos)
        pos += n * itemsize
    doc_idx = [0]
    for d in docs:
        doc_idx.append(doc_idx[-1] + len(d))
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(doc_idx))
    out += struct.pack(f"<{len(lengths)}i", *lengths)
    out += struct.pack(f"<{len(pointers)}q", *pointers)
    out += struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    return out


def test_round_trip(tmp_path):
    ds = build(str(tmp_path / "d"))
    flat = [s for d in DOCS for s in d]
    assert len(ds) == len(flat)
    for i, seq in enumerate(flat):
        assert ds[i].dtype == np.uint16
        assert ds[i].tolist() == seq
    assert ds[-1].tolist() == [9, 10]
    assert ds.sequence_lengths.dtype == np.int32
    assert ds.sequence_lengths.tolist() == [3, 1, 5, 0, 2]
    assert ds.sequence_pointers.dtype == np.int64
    assert ds.sequence_pointers.tolist() == [0, 6, 8, 18, 18]
    assert ds.document_indices.dtype == np.int64
    assert ds.document_indices.tolist() == [0, 2, 3, 5]
    assert ds.dtype == np.uint16
    assert [a.tolist() for a in ds[1:4]] == flat[1:4]
    assert [a.tolist() for a in ds[::2]] == flat[::2]
    assert ds[3:3] == []
    assert ds.get(2, offset=1, length=3).tolist() == [2, 3, 4]
    assert ds.get(2, offset=3).tolist() == [4, 65000]
    with pytest.raises(IndexError):
        ds.get(2, offset=4, length=2)
    with pytest.raises(IndexError):
        ds[5]
    assert IndexedDataset.exists(str(tmp_path / "d"))
    assert not IndexedDataset.exists(str(tmp_path / "nothing"))
    again = pickle.loads(pickle.dumps(ds))
    assert again[2].tolist() == flat[2]


def test_header_bytes_match_megatron(tmp_path):
    for dtype, code in [(np.uint16, 8), (np.int32, 4), (np.int64, 5), (np.uint8, 1)]:
        prefix = str(tmp_path / f"d_{code}")
        docs = [[[1, 2, 3], [4]], [[5, 6]]]
        build(prefix, docs, dtype)
        with open(index_file_path(prefix), "rb") as f:
            assert f.read() == megatron_bytes(docs, code, np.dtype(dtype).itemsize)
        with open(data_file_path(prefix), "rb") as f:
            assert f.read() == np.array([1, 2, 3, 4, 5, 6], dtype=dtype).tobytes()


def test_reads_hand_written_megatron_file(tmp_path):
    """A file laid out as Megatron-LM writes it (not by our builder) reads back."""
    docs = [[[3, 1, 4]], [[1, 5], [9, 2, 6]]]
    prefix = str(tmp_path / "m")
    with open(index_file_path(prefix), "wb") as f:
        f.write(megatron_bytes(docs, 4, 4))
    with open(data_file_path(prefix), "wb") as f:
        f.write(struct.pack("<8i", 3, 1, 4, 1, 5, 9, 2, 6))
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.int32
    assert [a.tolist() for a in ds[0:3]] == [[3, 1, 4], [1, 5], [9, 2, 6]]
    assert ds.document_indices.tolist() == [0, 1, 3]


def test_add_document_and_tensor_inputs(tmp_path):
    prefix = str(tmp_path / "a")
    builder = IndexedDatasetBuilder(data_file_path(prefix), dtype=np.int32)
    builder.add_document(torch.tensor([1, 2, 3, 4, 5]), [2, 3])
    builder.add_item(np.array([70000, 1], dtype=np.int64))
    builder.add_item(torch.tensor([6]))
    builder.end_document()
    builder.finalize(index_file_path(prefix))
    ds = IndexedDataset(prefix)
    assert [a.tolist() for a in ds[:]] == [[1, 2], [3, 4, 5], [70000, 1], [6]]
    assert ds.document_indices.tolist() == [0, 2, 4]


def test_unended_sequences_become_a_document(tmp_path):
    prefix = str(tmp_path / "u")
    builder = IndexedDatasetBuilder(data_file_path(prefix))
    builder.add_item([1])
    builder.finalize(index_file_path(prefix))
    assert IndexedDataset(prefix).document_indices.tolist() == [0, 1]


def test_best_dtype():
    assert best_dtype(21128) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32
    assert best_dtype(50257) == np.uint16
    assert best_dtype(250000) == np.int32
    assert best_dtype(None) == np.int32


def test_overflowing_id_is_refused(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "o.bin"), dtype=np.uint16)
    with pytest.raises(DataError, match="does not fit"):
        builder.add_item([1, 70000])
    builder.abort()
    assert os.listdir(tmp_path) == []


def test_merge(tmp_path):
    a = [[[1, 2]], [[3], [4, 5]]]
    b = [[[6, 7, 8]]]
    build(str(tmp_path / "a"), a)
    build(str(tmp_path / "b"), b)
    out = str(tmp_path / "ab")
    builder = IndexedDatasetBuilder(data_file_path(out), dtype=np.uint16)
    builder.add_index(str(tmp_path / "a"))
    builder.add_index(str(tmp_path / "b"))
    builder.finalize(index_file_path(out))
    merged = IndexedDataset(out)
    assert [x.tolist() for x in merged[:]] == [[1, 2], [3], [4, 5], [6, 7, 8]]
    assert merged.document_indices.tolist() == [0, 1, 3, 4]
    # byte-identical to building the concatenation directly
    build(str(tmp_path / "direct"), a + b)
    for path in (index_file_path, data_file_path):
        with open(path(out), "rb") as f1, open(path(str(tmp_path / "direct")), "rb") as f2:
            assert f1.read() == f2.read()


def test_merge_refuses_other_dtype(tmp_path):
    build(str(tmp_path / "a"), dtype=np.int32)
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    with pytest.raises(DataError, match="same tokenizer"):
        builder.add_index(str(tmp_path / "a"))
    builder.abort()


def test_crash_leaves_no_final_file(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(str(tmp_path / "c.bin")) as builder:
            builder.add_item([1, 2, 3])
            raise RuntimeError("simulated crash")
    assert os.listdir(tmp_path) == []
    # without finalize, only a temporary name exists
    builder = IndexedDatasetBuilder(str(tmp_path / "c.bin"))
    builder.add_item([1, 2, 3])
    assert not os.path.exists(tmp_path / "c.bin")
    builder.abort()


def _corrupt(tmp_path, name, edit):
    prefix = str(tmp_path / name)
    build(prefix)
    edit(prefix)
    with pytest.raises(DataError) as info:
        IndexedDataset(prefix)
    message = str(info.value)
    assert "\n" not in message
    return message


def _rewrite(path, fn):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(fn(data))


@pytest.mark.parametrize("name, edit, expected", [
    ("magic", lambda p: _rewrite(index_file_path(p), lambda d: b"NOTMEGATR" + d[9:]), "not a Megatron MMIDIDX"),
    ("version", lambda p: _rewrite(index_file_path(p), lambda d: d[:9] + struct.pack("<Q", 2) + d[17:]), "version 2"),
    ("dtype", lambda p: _rewrite(index_file_path(p), lambda d: d[:17] + b"\x09" + d[18:]), "dtype code 9"),
    ("header", lambda p: _rewrite(index_file_path(p), lambda d: d[:20]), "shorter than the 34-byte header"),
    ("idx_cut", lambda p: _rewrite(index_file_path(p), lambda d: d[:-8]), "truncated"),
    ("idx_long", lambda p: _rewrite(index_file_path(p), lambda d: d + b"\0" * 3), "longer than its header"),
    ("count", lambda p: _rewrite(index_file_path(p), lambda d: d[:18] + struct.pack("<Q", 6) + d[26:]), "promises 6 sequences"),
    ("bin_cut", lambda p: _rewrite(data_file_path(p), lambda d: d[:-2]), "do not belong together"),
    ("bin_missing", lambda p: os.remove(data_file_path(p)), "does not exist"),
    ("idx_missing", lambda p: os.remove(index_file_path(p)), "pass the dataset prefix"),
    ("doc_index", lambda p: _rewrite(index_file_path(p), lambda d: d[:-8] + struct.pack("<q", 99)), "invalid document index"),
    ("foreign", lambda p: _rewrite(index_file_path(p), lambda d: b"{\"json\": 1}"), "not a Megatron MMIDIDX"),
])
def test_bad_files_give_one_clear_sentence(tmp_path, name, edit, expected):
    message = _corrupt(tmp_path, name, edit)
    assert expected in message
    assert name in message or str(tmp_path) in message


def test_gather_equals_concatenated_slices(tmp_path):
    rng = np.random.default_rng(3)
    docs = [[rng.integers(0, 60000, rng.integers(1, 30)).tolist()] for _ in range(50)]
    build(str(tmp_path / "g"), docs)
    ds = IndexedDataset(str(tmp_path / "g"))
    for _ in range(200):
        seqs = rng.integers(0, len(ds), rng.integers(1, 6))
        first = int(rng.integers(0, ds.sequence_lengths[seqs[0]]))
        if len(seqs) == 1:
            last = int(rng.integers(first, ds.sequence_lengths[seqs[0]] + 1))
            expected = ds[int(seqs[0])][first:last]
        else:
            last = int(rng.integers(0, ds.sequence_lengths[seqs[-1]] + 1))
            expected = np.concatenate([ds[int(seqs[0])][first:]] + [ds[int(s)] for s in seqs[1:-1]]
                                      + [ds[int(seqs[-1])][:last]])
        got = ds.gather(seqs, first, last)
        assert got.dtype == np.int64 and got.tolist() == expected.tolist()
    assert ds.gather([3, 4]).tolist() == ds[3].tolist() + ds[4].tolist()
    # negative sequence numbers count from the end, as in numpy (and pass the entry checks)
    assert ds.gather([-1, 0]).tolist() == ds[len(ds) - 1].tolist() + ds[0].tolist()
    n3, n4 = int(ds.sequence_lengths[3]), int(ds.sequence_lengths[4])
    with pytest.raises(IndexError, match="last_length"):
        ds.gather([3, 4], 0, n4 + 1)
    with pytest.raises(IndexError, match="first_offset"):
        ds.gather([3, 4], n3 + 1, 1)
    with pytest.raises(IndexError, match="first_offset"):
        ds.gather([3], 2, 1)


# --- damaged entries: every read checks its own entry, verify() checks them all ---------

N_SEQUENCES = sum(len(d) for d in DOCS)


def _poke(prefix, offset, fmt, value):
    with open(index_file_path(prefix), "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _set_pointer(prefix, i, value):
    _poke(prefix, 34 + 4 * N_SEQUENCES + 8 * i, "<q", value)


def _set_length(prefix, i, value):
    _poke(prefix, 34 + 4 * i, "<i", value)


def _reads(ds, i):
    return [lambda: ds[i], lambda: ds.get(i), lambda: ds.gather([i]), lambda: ds[i:i + 1],
            lambda: ds.gather([0, i])]


@pytest.mark.parametrize("damage, entry, expected, first_bad", [
    # sequence 2 moved 2 bytes on: it still ends inside the .bin, so it used to read
    # garbage; sequence 1 no longer ends where it starts, so verify() names 1 first
    (lambda p: _set_pointer(p, 2, 10), 2, "sequence 3 starts at byte 18, not where this one ends", 1),
    (lambda p: _set_length(p, 1, -1), 1, "a length cannot be negative", 1),
    (lambda p: _set_pointer(p, 2, 10 ** 6), 2, "runs past the end of the 22-byte", 1),
    (lambda p: _set_length(p, 2, 4), 2, "sequence 3 starts at byte 18, not where this one ends", 2),
])
def test_damaged_entry_is_one_sentence_for_every_read_and_for_verify(tmp_path, damage, entry,
                                                                    expected, first_bad):
    prefix = str(tmp_path / "d")
    build(prefix)
    damage(prefix)
    ds = IndexedDataset(prefix)  # opening checks only the ends of the index
    messages = set()
    for read in _reads(ds, entry):
        with pytest.raises(DataError) as info:
            read()
        messages.add(str(info.value))
    assert len(messages) == 1, messages  # every kind of read gives the same sentence
    message = messages.pop()
    assert "\n" not in message
    assert message.startswith(f"{index_file_path(prefix)} is damaged at sequence {entry}:")
    assert expected in message and "regenerate" in message
    with pytest.raises(DataError) as info:
        ds.verify()
    assert str(info.value).startswith(f"{index_file_path(prefix)} is damaged at sequence {first_bad}:")
    assert "\n" not in str(info.value)


def test_the_neighbour_of_a_damaged_entry_is_refused_too(tmp_path):
    prefix = str(tmp_path / "d")
    build(prefix)
    _set_pointer(prefix, 2, 10)
    ds = IndexedDataset(prefix)
    with pytest.raises(DataError, match="damaged at sequence 1: .* sequence 2 starts at byte 10"):
        ds[1]
    assert ds[0].tolist() == DOCS[0][0]  # untouched entries still read
    assert ds[4].tolist() == DOCS[2][1]


def test_verify_finds_the_first_damaged_entry_of_a_large_index(tmp_path):
    rng = np.random.default_rng(0)
    docs = [[rng.integers(0, 1000, rng.integers(0, 20)).tolist()] for _ in range(5000)]
    prefix = str(tmp_path / "big")
    ds = build(prefix, docs)
    assert ds.verify() is ds
    # swap two lengths: the total (and so the .bin size) is unchanged
    lengths = ds.sequence_lengths.copy()
    k = 3000 + int(np.flatnonzero(lengths[3000:-1] != lengths[3001:])[0])
    del ds
    with open(index_file_path(prefix), "r+b") as f:
        f.seek(34 + 4 * k)
        f.write(struct.pack("<2i", int(lengths[k + 1]), int(lengths[k])))
    with pytest.raises(DataError, match=f"damaged at sequence {k}:"):
        IndexedDataset(prefix).verify()


def test_verify_checks_the_document_index_that_open_does_not_scan(tmp_path):
    prefix = str(tmp_path / "d")
    build(prefix)  # document index [0, 2, 3, 5]
    _poke(prefix, 34 + 12 * N_SEQUENCES + 8, "<q", 4)  # [0, 4, 3, 5]: not rising
    ds = IndexedDataset(prefix)
    with pytest.raises(DataError, match="invalid document index"):
        ds.verify()
    _poke(prefix, 34 + 12 * N_SEQUENCES + 8, "<q", -1)
    with pytest.raises(DataError, match="invalid document index"):
        IndexedDataset(prefix).verify()


def test_truncated_bin_is_one_sentence_at_open_and_for_verify(tmp_path):
    prefix = str(tmp_path / "d")
    ds = build(prefix)
    ds.verify()
    _rewrite(data_file_path(prefix), lambda d: d[:-4])
    with pytest.raises(DataError) as info:
        ds.verify()  # opened before the cut
    assert str(info.value).startswith(f"{data_file_path(prefix)} has changed since it was opened")
    with pytest.raises(DataError) as info:
        IndexedDataset(prefix)
    assert str(info.value).startswith(f"{data_file_path(prefix)} has 18 bytes but its index says 22")
