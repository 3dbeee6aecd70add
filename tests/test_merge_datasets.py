"""tools/merge_datasets.py: the merge of several datasets is their concatenation."""
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_core.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    data_file_path,
    index_file_path,
    merge_datasets,
)
from megatron_core.errors import DataError
from tests.harness import output_faults

pytestmark = pytest.mark.quick

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(os.path.dirname(HERE), "tools", "merge_datasets.py")


def build(prefix, docs, dtype=np.uint16):
    """docs: list of documents, each a list of sequences (lists of ids)."""
    with IndexedDatasetBuilder(data_file_path(prefix), dtype=dtype) as b:
        for doc in docs:
            for seq in doc:
                b.add_item(seq)
            b.end_document()
        b.finalize(index_file_path(prefix))
    return prefix


def random_docs(rng, n_docs, vocab=30000):
    return [[rng.integers(0, vocab, rng.integers(1, 40)).tolist() for _ in range(rng.integers(1, 4))]
            for _ in range(n_docs)]


def run(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def check_concatenation(merged, parts):
    """sequences, lengths and document boundaries of `merged` are those of `parts` in order."""
    sequences = [s.tolist() for p in parts for s in p[:]]
    assert [s.tolist() for s in merged[:]] == sequences
    assert merged.sequence_lengths.tolist() == [n for p in parts for n in p.sequence_lengths.tolist()]
    expected_docs, offset = [0], 0
    for p in parts:
        expected_docs += (p.document_indices[1:] + offset).tolist()
        offset += len(p)
    assert merged.document_indices.tolist() == expected_docs
    assert merged.dtype == parts[0].dtype


def test_cli_merges_a_directory_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    docs = {name: random_docs(rng, n) for name, n in (("b", 7), ("a", 5), ("c", 1))}
    for name, d in docs.items():
        build(str(shards / name), d)
    proc = run("--input", shards, "--output-prefix", tmp_path / "merged")
    assert proc.returncode == 0, proc.stderr
    assert "merged 3 datasets" in proc.stderr and "13 documents" in proc.stderr
    merged = IndexedDataset(str(tmp_path / "merged"))
    check_concatenation(merged, [IndexedDataset(str(shards / n)) for n in ("a", "b", "c")])
    # same bytes as building the concatenated documents in one go
    build(str(tmp_path / "direct"), docs["a"] + docs["b"] + docs["c"])
    for path in (data_file_path, index_file_path):
        assert open(path(str(tmp_path / "merged")), "rb").read() == \
            open(path(str(tmp_path / "direct")), "rb").read()


def test_cli_merges_a_list_of_prefixes_in_the_given_order(tmp_path):
    rng = np.random.default_rng(1)
    a = build(str(tmp_path / "a"), random_docs(rng, 4), dtype=np.int32)
    b = build(str(tmp_path / "b"), random_docs(rng, 6, vocab=100000), dtype=np.int32)
    proc = run("--input", b, a + ".bin", "--output-prefix", tmp_path / "ba")
    assert proc.returncode == 0, proc.stderr
    check_concatenation(IndexedDataset(str(tmp_path / "ba")), [IndexedDataset(b), IndexedDataset(a)])


def test_dtype_mismatch_is_one_sentence(tmp_path):
    a = build(str(tmp_path / "a"), [[[1, 2]]], dtype=np.uint16)
    b = build(str(tmp_path / "b"), [[[3]]], dtype=np.int32)
    out = tmp_path / "out"
    out.mkdir()
    proc = run("--input", a, b, "--output-prefix", out / "ab")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot merge") and "a.idx (uint16" in lines[0] \
        and "b.idx (int32" in lines[0] and "same tokenizer" in lines[0]
    assert os.listdir(out) == []


def test_bad_inputs_name_the_problem(tmp_path):
    a = build(str(tmp_path / "a"), [[[1, 2]]])
    with pytest.raises(DataError, match="does not exist"):
        merge_datasets([a, str(tmp_path / "missing")], str(tmp_path / "o"))
    with pytest.raises(DataError, match="also an input"):
        merge_datasets([a], a)
    with pytest.raises(DataError, match="nothing to merge"):
        merge_datasets([], str(tmp_path / "o"))
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run("--input", empty, "--output-prefix", tmp_path / "o")
    assert proc.returncode == 2 and "nothing to merge" in proc.stderr and "Traceback" not in proc.stderr
    os.remove(data_file_path(a))
    proc = run("--input", tmp_path, "--output-prefix", tmp_path / "o")
    assert proc.returncode == 2 and "has no a.bin" in proc.stderr
    assert not os.path.exists(tmp_path / "o.idx")


def test_merge_of_preprocessed_shards_equals_preprocessing_the_whole(tmp_path):
    """Shards of a real corpus, preprocessed apart and merged, give the whole corpus' bytes."""
    from megatron_core.data.preprocess import PreprocessOptions, preprocess

    src = os.path.join(HERE, "data", "zh_news_200.jsonl")
    lines = open(src, "rb").read().splitlines(keepends=True)
    vocab = os.path.join(HERE, "data", "vocab", "bert-base-chinese-vocab.txt")

    def prep(path, prefix):
        preprocess(PreprocessOptions(input=str(path), output_prefix=str(prefix), vocab_file=vocab,
                                     tokenizer_type="BertWordPieceLowerCase", append_eod=True,
                                     log_interval=0), log=lambda m: None)
        return str(prefix) + "_text_document"

    shards = []
    for k, (lo, hi) in enumerate(((0, 70), (70, 71), (71, 200))):
        path = tmp_path / f"part{k}.jsonl"
        path.write_bytes(b"".join(lines[lo:hi]))
        shards.append(prep(path, tmp_path / f"part{k}"))
    whole = prep(src, tmp_path / "whole")
    merge_datasets(shards, str(tmp_path / "merged"))
    for path in (data_file_path, index_file_path):
        assert open(path(str(tmp_path / "merged")), "rb").read() == open(path(whole), "rb").read()


def test_merge_refuses_a_damaged_input_unless_told_not_to_verify(tmp_path):
    rng = np.random.default_rng(4)
    a = build(str(tmp_path / "a"), random_docs(rng, 30))
    b = build(str(tmp_path / "b"), random_docs(rng, 30))
    # lengths of two neighbours swapped: every size still adds up, only the entries lie
    ds = IndexedDataset(a)
    k = int(np.flatnonzero(ds.sequence_lengths[10:-1] != ds.sequence_lengths[11:])[0]) + 10
    first, second = int(ds.sequence_lengths[k]), int(ds.sequence_lengths[k + 1])
    del ds
    with open(index_file_path(a), "r+b") as f:
        f.seek(34 + 4 * k)
        f.write(np.array([second, first], np.int32).tobytes())
    out = tmp_path / "out"
    out.mkdir()
    proc = run("--input", a, b, "--output-prefix", out / "ab")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {index_file_path(a)} is damaged at sequence {k}:")
    assert os.listdir(out) == []
    # with --no-verify the merge rebuilds the pointers from the lengths it copies: the
    # result is consistent, so no later check can tell that two boundaries moved
    assert run("--input", a, b, "--output-prefix", out / "ab", "--no-verify").returncode == 0
    merged = IndexedDataset(str(out / "ab")).verify()
    assert merged.sequence_lengths[k] == second and merged.sequence_lengths[k + 1] == first


@pytest.mark.parametrize("kind", output_faults.KINDS)
def test_os_error_on_the_output_is_one_sentence_and_leaves_nothing(tmp_path, kind):
    rng = np.random.default_rng(5)  # inputs of about 100 KB: more than a full disk takes
    inputs = [build(str(tmp_path / f"in{k}"), random_docs(rng, 600)) for k in range(2)]

    def command(directory):
        return [sys.executable, TOOL, "--input", *inputs, "--output-prefix", os.path.join(directory, "m")]
    line, directory = output_faults.failure_line_or_skip(kind, str(tmp_path), command, timeout=60)
    if kind == "missing_parent":
        assert line == f"error: output directory {directory} does not exist; create it first."
    else:
        assert line.startswith(f"error: cannot use {directory}/m.")
