"""GPTDataset: samples are windows of the shuffled document stream, built once and cached."""
import json
import os

import numpy as np
import pytest

from megatron_core.data import index_helpers
from megatron_core.data.dataset_cache import description_hash
from megatron_core.data.gpt_dataset import GPTDataset
from megatron_core.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron_core.errors import DataError
from tests.harness.datasets import write_random_dataset

pytestmark = pytest.mark.quick

EOD = 0


@pytest.fixture
def random_data(tmp_path):
    prefix = str(tmp_path / "data" / "random_text_document")
    os.makedirs(os.path.dirname(prefix))
    docs = write_random_dataset(prefix)
    return IndexedDataset(prefix), docs


@pytest.fixture(params=["c++", "numpy"])
def backend(request, monkeypatch):
    """Run a test with the compiled helpers and again with the numpy fallback."""
    if request.param == "c++":
        if index_helpers._compiled is None:
            pytest.skip("C++ dataset helpers not built (pip install -e .)")
    else:
        monkeypatch.setattr(index_helpers, "_compiled", None)
    return request.param


def stream_of(dataset, docs):
    return np.concatenate([docs[d] for d in dataset.doc_idx])


@pytest.mark.parametrize("seq_length,num_samples", [(8, 10), (16, 150), (7, 400), (64, 30)])
def test_samples_are_windows_of_the_document_stream(random_data, tmp_path, backend,
                                                     seq_length, num_samples):
    indexed, docs = random_data
    dataset = GPTDataset(indexed, (5, 55), num_samples, seq_length, seed=3,
                         cache_dir=str(tmp_path / "cache"))
    assert len(dataset) >= num_samples
    stream = stream_of(dataset, docs)
    for i in range(len(dataset)):
        expected = stream[i * seq_length: i * seq_length + seq_length + 1]
        np.testing.assert_array_equal(dataset.sample_tokens(i), expected)
    for i in range(len(dataset)):
        text = dataset[i]["text"]
        assert text.dtype == np.int64 and text.shape == (seq_length + 1,)
        np.testing.assert_array_equal(text, dataset.sample_tokens(int(dataset.shuffle_idx[i])))
    # The shuffle is a permutation of all samples.
    np.testing.assert_array_equal(np.sort(dataset.shuffle_idx), np.arange(len(dataset)))


def test_one_epoch_uses_every_document_token_once(random_data, tmp_path, backend):
    indexed, docs = random_data
    seq_length = 10
    dataset = GPTDataset(indexed, (0, 60), None, seq_length, seed=1, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(np.sort(dataset.doc_idx), np.arange(60))
    tokens = sum(len(d) for d in docs)
    assert len(dataset) == (tokens - 1) // seq_length
    # Inputs (all but the shared last token) tile the stream without gap or repeat.
    inputs = np.concatenate([dataset.sample_tokens(i)[:-1] for i in range(len(dataset))])
    np.testing.assert_array_equal(inputs, stream_of(dataset, docs)[: len(dataset) * seq_length])


@pytest.mark.parametrize("last_epoch_share,separate", [(0.2, True), (0.95, False)])
def test_each_epoch_holds_every_document_once(random_data, tmp_path, backend, last_epoch_share,
                                              separate):
    indexed, docs = random_data
    seq_length = 16
    tokens = sum(len(d) for d in docs[10:50])
    per_epoch = (tokens - 1) // seq_length
    num_samples = int((2 + last_epoch_share) * per_epoch)
    dataset = GPTDataset(indexed, (10, 50), num_samples, seq_length, seed=5, cache_dir=str(tmp_path))
    assert len(dataset.doc_idx) == 3 * 40
    np.testing.assert_array_equal(np.bincount(dataset.doc_idx, minlength=50)[10:], 3)
    # Megatron's rule: a last epoch of under 80% of an epoch's samples is shuffled on its
    # own, both its documents and its samples; otherwise all epochs are shuffled together.
    before_last = (2 * tokens - 1) // seq_length
    last_docs_apart = np.array_equal(np.sort(dataset.doc_idx[-40:]), np.arange(10, 50))
    samples_apart = np.array_equal(np.sort(dataset.shuffle_idx[:before_last]), np.arange(before_last))
    assert last_docs_apart == separate and samples_apart == separate


def test_same_parameters_give_the_same_dataset(random_data, tmp_path):
    indexed, _ = random_data
    first = GPTDataset(indexed, (0, 50), 100, 16, seed=7, cache_dir=str(tmp_path / "a"))
    again = GPTDataset(indexed, (0, 50), 100, 16, seed=7, cache_dir=str(tmp_path / "b"))
    assert not first.cache_hit and not again.cache_hit
    for name in ("doc_idx", "sample_idx", "shuffle_idx"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    other_seed = GPTDataset(indexed, (0, 50), 100, 16, seed=8, cache_dir=str(tmp_path / "a"))
    assert other_seed.unique_hash != first.unique_hash
    assert not np.array_equal(other_seed.shuffle_idx, first.shuffle_idx)


def test_second_build_hits_the_cache_named_by_hash(random_data, tmp_path):
    indexed, _ = random_data
    cache_dir = tmp_path / "cache"
    first = GPTDataset(indexed, (0, 50), 100, 16, seed=7, cache_dir=str(cache_dir))
    digest = description_hash(first.description)
    names = sorted(os.listdir(cache_dir))
    assert names == sorted(f"GPTDataset-{digest}-{kind}" for kind in
                           ("description.json", "doc_idx.npy", "sample_idx.npy", "shuffle_idx.npy"))
    with open(cache_dir / f"GPTDataset-{digest}-description.json") as f:
        saved = json.load(f)
    assert saved["seq_length"] == 16 and saved["seed"] == 7 and saved["document_range"] == [0, 50]
    assert saved["path_prefix"] == os.path.abspath(indexed.path_prefix)

    second = GPTDataset(indexed, (0, 50), 100, 16, seed=7, cache_dir=str(cache_dir))
    assert second.cache_hit
    for i in range(len(first)):
        np.testing.assert_array_equal(first[i]["text"], second[i]["text"])

    # Without its description (written last) an entry counts as unfinished and is rebuilt.
    os.remove(cache_dir / f"GPTDataset-{digest}-description.json")
    third = GPTDataset(indexed, (0, 50), 100, 16, seed=7, cache_dir=str(cache_dir))
    assert not third.cache_hit
    assert not [n for n in os.listdir(cache_dir) if n.endswith(".tmp")]


def test_corpus_regenerated_under_the_same_name_gets_a_new_index(tmp_path):
    """Same prefix, same number of documents, even the same number of tokens (the old
    key's guards): only the lengths differ, and the cached index must not be reused."""
    prefix = str(tmp_path / "corpus_text_document")
    cache = str(tmp_path / "cache")
    docs = write_random_dataset(prefix, num_docs=40, seed=1)
    old = GPTDataset(IndexedDataset(prefix), (0, 40), 50, 8, seed=3, cache_dir=cache)
    assert not old.cache_hit
    # regenerate: the same documents in reverse order, then one token moved between two
    regenerated = [d.copy() for d in reversed(docs)]
    donor = next(i for i, d in enumerate(regenerated) if len(d) > 2)
    regenerated[donor] = np.delete(regenerated[donor], 0)
    regenerated[donor - 1 if donor else 1] = np.insert(regenerated[donor - 1 if donor else 1], 0, 7)
    builder = IndexedDatasetBuilder(prefix + ".bin", np.uint16)
    for tokens in regenerated:
        builder.add_item(tokens)
        builder.end_document()
    builder.finalize(prefix + ".idx")
    indexed = IndexedDataset(prefix)
    assert len(indexed) == 40 and int(indexed.sequence_lengths.sum()) == sum(map(len, docs))

    new = GPTDataset(indexed, (0, 40), 50, 8, seed=3, cache_dir=cache)
    assert not new.cache_hit and new.unique_hash != old.unique_hash
    fresh = GPTDataset(indexed, (0, 40), 50, 8, seed=3, cache_dir=str(tmp_path / "fresh"))
    stream = np.concatenate([regenerated[d] for d in new.doc_idx])
    for i in range(len(new)):
        np.testing.assert_array_equal(new[i]["text"], fresh[i]["text"])
        start = int(new.shuffle_idx[i]) * 8
        np.testing.assert_array_equal(new[i]["text"], stream[start:start + 9])
    # and the unchanged corpus still hits its own entry
    assert GPTDataset(indexed, (0, 40), 50, 8, seed=3, cache_dir=cache).cache_hit


def test_default_cache_sits_next_to_the_data(random_data):
    indexed, _ = random_data
    dataset = GPTDataset(indexed, (0, 10), 5, 8, seed=1)
    cache_dir = os.path.join(os.path.dirname(indexed.path_prefix), "index-cache")
    assert dataset.cache_files_prefix.startswith(cache_dir)
    assert any(n.endswith("sample_idx.npy") for n in os.listdir(cache_dir))


def test_user_mistakes_get_a_clear_error(random_data, tmp_path):
    indexed, _ = random_data
    with pytest.raises(DataError, match="has 60"):
        GPTDataset(indexed, (50, 70), 10, 8, seed=1, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="--seq-length"):
        GPTDataset(indexed, (0, 10), 10, 0, seed=1, cache_dir=str(tmp_path))


def _random_sample_idx_inputs(rng, with_empty_docs):
    num_docs = int(rng.integers(1, 40))
    sizes = rng.integers(0 if with_empty_docs else 1, 30, num_docs).astype(np.int32)
    if sizes.sum() < 2:
        sizes[0] = 2
    epochs = int(rng.integers(1, 4))
    doc_idx = np.tile(np.arange(num_docs, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    return sizes, doc_idx, epochs, int(sizes.sum())


@pytest.mark.skipif(index_helpers._compiled is None, reason="C++ dataset helpers not built")
def test_compiled_and_numpy_sample_idx_are_identical():
    rng = np.random.default_rng(0)
    for trial in range(300):
        sizes, doc_idx, epochs, tokens = _random_sample_idx_inputs(rng, with_empty_docs=trial % 2 == 1)
        seq_length = int(rng.integers(1, 50))
        for drop_last in (True, False):
            for add_extra in (0, 1):
                args = (sizes, doc_idx, seq_length, epochs, tokens, drop_last, add_extra)
                compiled = index_helpers._compiled.build_sample_idx(*args)
                fallback = index_helpers.numpy_build_sample_idx(*args)
                assert compiled.dtype == fallback.dtype == np.int32
                np.testing.assert_array_equal(compiled, fallback, err_msg=str(args))


def test_sample_idx_rows_point_at_sample_starts():
    # Independent of both implementations: walk the stream token by token.
    rng = np.random.default_rng(1)
    for _ in range(100):
        sizes, doc_idx, epochs, tokens = _random_sample_idx_inputs(rng, with_empty_docs=False)
        seq_length = int(rng.integers(1, 20))
        owner = np.repeat(np.arange(len(doc_idx)), sizes[doc_idx])
        first = np.concatenate(([0], np.cumsum(sizes[doc_idx])))
        sample_idx = index_helpers.build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens)
        assert len(sample_idx) - 1 == (epochs * tokens - 1) // seq_length
        for row, (pos, offset) in enumerate(sample_idx):
            token = row * seq_length
            assert (pos, offset) == (owner[token], token - first[owner[token]])
