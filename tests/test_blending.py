"""--split parsing, --data-path blending, and the train/valid/test dataset builder."""
import math
import os

import numpy as np
import pytest

from megatron_core.data import index_helpers
from megatron_core.data.blended_dataset import BlendedDataset, parse_data_path
from megatron_core.data.builder import build_train_valid_test_datasets
from megatron_core.data.gpt_dataset import GPTDataset
from megatron_core.data.indexed_dataset import IndexedDataset
from megatron_core.data.splits import parse_split, split_ranges
from megatron_core.errors import DataError
from tests.harness.distributed import run_distributed
from tests.harness.datasets import write_random_dataset

pytestmark = pytest.mark.quick


# -- --split ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["949,50,1", "0.949,0.05,0.001", "949/50/1", " 949, 50, 1 "])
def test_split_forms_agree(text):
    assert split_ranges(text, 1000) == [(0, 949), (949, 999), (999, 1000)]


def test_short_split_strings_leave_later_splits_empty():
    assert split_ranges("98,2", 100) == [(0, 98), (98, 100), (100, 100)]
    assert split_ranges("1", 7) == [(0, 7), (7, 7), (7, 7)]
    assert parse_split("3,1") == [0.75, 0.25, 0.0]


@pytest.mark.parametrize("size", [1, 2, 3, 10, 17, 101, 12345])
@pytest.mark.parametrize("text", ["949,50,1", "1,1,1", "0,1,1", "2,0,1", "99,1"])
def test_split_ranges_cover_every_document_once(text, size):
    ranges = split_ranges(text, size)
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    np.testing.assert_array_equal(covered, np.arange(size))
    shares = parse_split(text)
    for (a, b), share in zip(ranges, shares):
        assert abs((b - a) - share * size) <= 2


@pytest.mark.parametrize("text", ["abc", "1,2,3,4", "-1,2", "0,0,0", "", "1,,2", "nan,1"])
def test_bad_split_strings_name_the_flag(text):
    with pytest.raises(DataError, match=r'--split ".*" is not valid'):
        parse_split(text)


# -- --data-path ------------------------------------------------------------------------

def test_parse_data_path():
    weights, prefixes = parse_data_path(["0.3", "a", "0.7", "b"])
    assert prefixes == ["a", "b"] and weights == pytest.approx([0.3, 0.7])
    assert parse_data_path(["data/x_text_document"]) == ([1.0], ["data/x_text_document"])
    weights, prefixes = parse_data_path("2 a 6 b")
    assert prefixes == ["a", "b"] and weights == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("bad", [[], ["0.3", "a", "b"], ["x", "a", "0.5", "b"], ["-1", "a", "2", "b"],
                                 ["0", "a", "0", "b"]])
def test_bad_data_paths_name_the_flag(bad):
    with pytest.raises(DataError, match="--data-path"):
        parse_data_path(bad)


# -- blending index ---------------------------------------------------------------------

@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.5, 0.5], [1.0], [0.1, 0.2, 0.3, 0.4],
                                     [0.013, 0.5, 0.287, 0.2], [1 / 3, 1 / 3, 1 / 3]])
def test_blend_ratios_stay_within_one_sample(weights):
    size = 5000
    dataset_index, dataset_sample_index = index_helpers.build_blending_indices(weights, size)
    onehot = np.zeros((size, len(weights)), dtype=np.int64)
    onehot[np.arange(size), dataset_index] = 1
    taken = np.cumsum(onehot, axis=0)  # taken[k - 1, j]: samples of j among the first k
    expected = np.outer(np.arange(1, size + 1), weights)
    assert np.abs(taken - expected).max() <= 1.0
    # Each dataset's samples are read in order 0, 1, 2, ...
    for j in range(len(weights)):
        np.testing.assert_array_equal(dataset_sample_index[dataset_index == j],
                                      np.arange(taken[-1, j]))


@pytest.mark.skipif(index_helpers._compiled is None, reason="C++ dataset helpers not built")
@pytest.mark.parametrize("num_datasets,size", [(1, 50), (2, 3000), (7, 3000), (300, 2000)])
@pytest.mark.parametrize("equal_weights", [False, True])  # equal weights tie at every turn
def test_compiled_and_numpy_blending_are_identical(num_datasets, size, equal_weights):
    rng = np.random.default_rng(num_datasets)
    weights = np.ones(num_datasets) if equal_weights else rng.random(num_datasets)
    weights /= weights.sum()
    compiled = index_helpers._compiled.build_blending_indices(weights, size)
    fallback = index_helpers.numpy_build_blending_indices(weights, size)
    assert compiled[0].dtype == fallback[0].dtype == (np.uint8 if num_datasets <= 255 else np.int16)
    for c, f in zip(compiled, fallback):
        np.testing.assert_array_equal(c, f)


# -- BlendedDataset ---------------------------------------------------------------------

@pytest.fixture
def two_datasets(tmp_path):
    prefixes = []
    for k in range(2):
        prefix = str(tmp_path / f"corpus{k}_text_document")
        write_random_dataset(prefix, num_docs=80, seed=k, vocab=1000 + 1000 * k)
        prefixes.append(prefix)
    return prefixes


def test_blended_dataset_reads_the_chosen_samples_and_caches(two_datasets, tmp_path):
    parts = [GPTDataset(IndexedDataset(p), (0, 80), 120, 8, seed=1, cache_dir=str(tmp_path / "c"))
             for p in two_datasets]
    blend = BlendedDataset(parts, [0.25, 0.75], 150, cache_dir=str(tmp_path / "c"))
    assert not blend.cache_hit and len(blend) == 150
    counts = np.bincount(blend.dataset_index, minlength=2)
    assert abs(counts[0] - 37.5) <= 1 and abs(counts[1] - 112.5) <= 1
    for i in range(len(blend)):
        sample = blend[i]
        k, j = int(blend.dataset_index[i]), int(blend.dataset_sample_index[i])
        assert sample["dataset_id"] == k
        np.testing.assert_array_equal(sample["text"], parts[k][j]["text"])
    again = BlendedDataset(parts, [0.25, 0.75], 150, cache_dir=str(tmp_path / "c"))
    assert again.cache_hit and again.unique_hash == blend.unique_hash
    np.testing.assert_array_equal(again.dataset_index, blend.dataset_index)
    assert os.path.isfile(tmp_path / "c" / f"BlendedDataset-{blend.unique_hash}-description.json")


def test_blend_that_outruns_a_dataset_says_so(two_datasets, tmp_path):
    small = GPTDataset(IndexedDataset(two_datasets[0]), (0, 5), None, 8, seed=1, cache_dir=str(tmp_path))
    big = GPTDataset(IndexedDataset(two_datasets[1]), (0, 80), 400, 8, seed=1, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="corpus0_text_document but it provides"):
        BlendedDataset([small, big], [0.5, 0.5], 400, cache_dir=str(tmp_path))


# -- builder ----------------------------------------------------------------------------

def test_builder_single_prefix_splits_documents(two_datasets, tmp_path):
    train, valid, test = build_train_valid_test_datasets(
        [two_datasets[0]], "90,8,2", [200, 20, 5], seq_length=16, seed=1234,
        cache_dir=str(tmp_path / "cache"))
    assert [d.document_range for d in (train, valid, test)] == [(0, 72), (72, 78), (78, 80)]
    assert len(train) >= 200 and len(valid) >= 20 and len(test) >= 5
    assert set(np.unique(valid.doc_idx)) == set(range(72, 78))
    _, _, none = build_train_valid_test_datasets(two_datasets[0], "98,2", [10, 5, 0], 16, 1,
                                                 cache_dir=str(tmp_path / "cache"))
    assert none is None


@pytest.mark.parametrize("blend", [False, True])
def test_builder_refuses_a_split_asked_for_samples_that_gets_no_documents(two_datasets, tmp_path, blend):
    data_path = ["0.5", two_datasets[0], "0.5", two_datasets[1]] if blend else two_datasets[0]
    # test's share is positive but rounds to no document of 80
    with pytest.raises(DataError) as info:
        build_train_valid_test_datasets(data_path, "98,1.9,0.1", [10, 5, 5], 16, 1,
                                        cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"the test split of {two_datasets[0]} gets no documents "
                              f"(--split 98,1.9,0.1 over its 80 documents) but ")
    assert "larger share in --split" in message


def test_builder_gives_no_dataset_for_a_split_whose_share_is_zero(two_datasets, tmp_path):
    """A zero (or absent) share in --split means no such split, as in Megatron, even though
    the run asks for its samples."""
    for split in ("98,2", "98,2,0"):
        train, valid, test = build_train_valid_test_datasets(two_datasets[0], split, [10, 5, 5], 16, 1,
                                                             cache_dir=str(tmp_path / "cache"))
        assert train is not None and valid is not None and test is None


def test_builder_verify_checks_every_entry_before_building(two_datasets, tmp_path):
    import struct
    build_train_valid_test_datasets(two_datasets[0], "1", [10, 0, 0], 8, 1, verify=True,
                                    cache_dir=str(tmp_path / "cache"))
    with open(two_datasets[0] + ".idx", "r+b") as f:  # a length in the middle of the index
        f.seek(34 + 4 * 40)
        f.write(struct.pack("<i", -3))
    with pytest.raises(DataError, match=f"{two_datasets[0]}.idx is damaged at sequence 40:"):
        build_train_valid_test_datasets(two_datasets[0], "1", [10, 0, 0], 8, 1, verify=True,
                                        cache_dir=str(tmp_path / "cache2"))
    assert not (tmp_path / "cache2").exists()


def test_builder_blends_with_margin(two_datasets, tmp_path):
    data_path = ["0.3", two_datasets[0], "0.7", two_datasets[1]]
    num_samples = [300, 40, 0]
    train, valid, test = build_train_valid_test_datasets(
        data_path, "90,10", num_samples, seq_length=8, seed=5, cache_dir=str(tmp_path / "cache"))
    assert test is None
    for blend, n in ((train, 300), (valid, 40)):
        assert isinstance(blend, BlendedDataset) and len(blend) == n
        for part, w in zip(blend.datasets, (0.3, 0.7)):
            assert part.num_samples == math.ceil(n * w * 1.005)
        for i in range(len(blend)):
            assert blend[i]["text"].shape == (9,)
    with pytest.raises(DataError, match="no dataset at"):
        build_train_valid_test_datasets(str(tmp_path / "missing"), "1", [1, 0, 0], 8, 1)


def test_builder_checks_every_prefix_before_building(two_datasets, tmp_path):
    cache = tmp_path / "cache"
    missing = str(tmp_path / "nowhere_text_document")
    with pytest.raises(DataError, match=f"no dataset at {missing} "):
        build_train_valid_test_datasets(["0.3", two_datasets[0], "0.7", missing], "1", [10, 0, 0],
                                        8, 1, cache_dir=str(cache))
    assert not cache.exists()  # nothing was built for the first prefix either
    with pytest.raises(DataError, match="without .bin"):
        build_train_valid_test_datasets(["1", two_datasets[0] + ".bin"], "1", [10, 0, 0], 8, 1,
                                        cache_dir=str(cache))
    for bad, why in ((["0.3", two_datasets[0], "0.7"], "entries"),
                     (["x", two_datasets[0], "0.7", two_datasets[1]], "not a weight")):
        with pytest.raises(DataError, match=why):
            build_train_valid_test_datasets(bad, "1", [10, 0, 0], 8, 1, cache_dir=str(cache))


def _build_on_two_ranks(data_path, cache_dir):
    import torch.distributed as dist
    datasets = build_train_valid_test_datasets(data_path, "80,20", [100, 10, 0], 8, 3, cache_dir)
    train, valid, _ = datasets
    parts = list(train.datasets) + list(valid.datasets) + [train, valid]
    hits = [p.cache_hit for p in parts]
    # Rank 0 builds while rank 1 waits, then rank 1 finds everything in the cache.
    assert hits == [dist.get_rank() == 1] * len(parts), hits


def test_builder_builds_once_across_ranks(two_datasets, tmp_path):
    data_path = ["0.5", two_datasets[0], "0.5", two_datasets[1]]
    run_distributed(_build_on_two_ranks, 2, data_path, str(tmp_path / "cache"), timeout=120)
