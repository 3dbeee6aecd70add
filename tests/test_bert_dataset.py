"""BERT pretraining samples: mapping, layout, NSP/SOP labels, truncation, masking,
determinism, and Chinese whole-word masking at sample time."""
import os

import numpy as np
import pytest

from megatron_core.data import chinese_wwm
from megatron_core.data.bert_dataset import (BertDataset, BertDatasetConfig,
                                             build_sentence_sample_mapping, sentence_sample_mapping)
from megatron_core.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron_core.errors import DataError
from tests.harness.datasets import bert_chinese_tokenizer, write_zh_sentence_dataset

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def zh(tmp_path_factory):
    tokenizer = bert_chinese_tokenizer()
    prefix, docs_text, docs_ids = write_zh_sentence_dataset(tmp_path_factory.mktemp("zh"), tokenizer)
    return tokenizer, IndexedDataset(prefix), docs_text, docs_ids


def original_tokens(sample):
    """Undo the masking: labels hold the original ids wherever a token was predicted."""
    return np.where(sample["loss_mask"] == 1, sample["labels"], sample["text"])


def segments(sample, tokenizer):
    """(A, B) token lists of an unmasked sample, checked against the [CLS] A [SEP] B [SEP]
    layout and its token types and padding mask."""
    tokens = original_tokens(sample).tolist()
    n = int(sample["padding_mask"].sum())
    assert sample["padding_mask"].tolist() == [1] * n + [0] * (len(tokens) - n)
    assert tokens[n:] == [tokenizer.pad] * (len(tokens) - n)
    assert tokens[0] == tokenizer.cls and tokens[n - 1] == tokenizer.sep
    seps = [i for i in range(n) if tokens[i] == tokenizer.sep]
    assert len(seps) in (1, 2)
    types = sample["types"].tolist()
    assert types[:seps[0] + 1] == [0] * (seps[0] + 1)
    assert types[seps[0] + 1:n] == [1] * (n - seps[0] - 1)
    assert types[n:] == [0] * (len(tokens) - n)
    a = tokens[1:seps[0]]
    b = tokens[seps[0] + 1:seps[1]] if len(seps) == 2 else []
    return a, b


def flat(sentences):
    return [t for s in sentences for t in s]


def document_of(mapping_row):
    return int(mapping_row[3])


def test_sample_mapping_groups_sentences_inside_documents():
    lengths = np.array([5, 7, 3, 9, 4, 6, 2, 8, 1, 5, 5], dtype=np.int32)
    doc_index = np.array([0, 4, 5, 11])  # docs of 4, 1 and 6 sentences
    rows = build_sentence_sample_mapping(lengths, doc_index, range(3), max_num_tokens=10,
                                         short_seq_prob=0.0, min_sentences=2, seed=3,
                                         num_samples=None)
    rows = rows[np.argsort(rows[:, 0])]
    # doc 1 has a single sentence: no pair possible. Groups close at >= 10 tokens while
    # two sentences remain, otherwise at the end of the document.
    assert rows[:, :2].tolist() == [[0, 2], [2, 4], [5, 8], [8, 11]]
    assert rows[:, 2].tolist() == [10] * 4
    assert rows[:, 3].tolist() == [0, 0, 2, 2]

    many = build_sentence_sample_mapping(lengths, doc_index, range(3), 10, 0.0, 2, 3, 10)
    assert len(many) == 10  # three epochs of four, cut to ten
    short = build_sentence_sample_mapping(np.full(20000, 3, dtype=np.int32),
                                          np.array([0, 20000]), [0], 50, 0.25, 1, 0, None)
    share_short = np.mean(short[:, 2] < 50)
    assert 0.2 < share_short < 0.3 and short[:, 2].min() >= 2


def test_layout_sop_swaps_exactly_half_and_keeps_text(zh):
    tokenizer, indexed, _, _ = zh
    config = BertDatasetConfig(max_seq_length=512, binary_head=True,
                               sentence_order_prediction=True, seed=11, num_samples=300)
    ds = BertDataset(indexed, tokenizer, config, cache_dir=None)
    swapped = checked = 0
    for i in range(len(ds)):
        sample = ds[i]
        a, b = segments(sample, tokenizer)
        start, end = ds.samples_mapping[i][:2]
        text = flat(indexed[int(s)].tolist() for s in range(start, end))
        assert a and b
        swapped += sample["is_random"]
        if sample["truncated"]:
            continue
        checked += 1
        if sample["is_random"]:
            assert b + a == text
        else:
            assert a + b == text
        # the split point is a sentence boundary
        boundaries = np.cumsum([len(indexed[int(s)]) for s in range(start, end)]).tolist()
        assert len(a if not sample["is_random"] else b) in boundaries
    assert checked > 200
    assert 0.4 < swapped / len(ds) < 0.6


def test_nsp_random_next_comes_from_another_document(zh):
    tokenizer, indexed, _, docs_ids = zh
    ds = BertDataset(indexed, tokenizer,
                     BertDatasetConfig(max_seq_length=512, seed=5, num_samples=300), cache_dir=None)
    sentence_runs = {}  # every run of consecutive sentences, flattened -> its documents
    for d, doc in enumerate(docs_ids):
        for s in range(len(doc)):
            for e in range(s + 1, len(doc) + 1):
                sentence_runs.setdefault(tuple(flat(doc[s:e])), set()).add(d)
    randoms = checked = 0
    for i in range(len(ds)):
        sample = ds[i]
        randoms += sample["is_random"]
        if sample["truncated"]:
            continue
        checked += 1
        a, b = segments(sample, tokenizer)
        own = document_of(ds.samples_mapping[i])
        start, end = ds.samples_mapping[i][:2]
        text = flat(indexed[int(s)].tolist() for s in range(start, end))
        if sample["is_random"]:
            assert text[:len(a)] == a and len(a) < len(text)
            assert tuple(b) in sentence_runs and sentence_runs[tuple(b)] - {own}
        else:
            assert a + b == text
    assert checked > 100
    assert 0.4 < randoms / len(ds) < 0.6


def test_truncation_and_lengths(zh):
    tokenizer, indexed, _, _ = zh
    ds = BertDataset(indexed, tokenizer,
                     BertDatasetConfig(max_seq_length=40, sentence_order_prediction=True, seed=2),
                     cache_dir=None)
    truncated = 0
    for i in range(len(ds)):
        sample = ds[i]
        assert all(len(sample[k]) == 40 for k in ("text", "types", "labels", "loss_mask",
                                                   "padding_mask"))
        a, b = segments(sample, tokenizer)
        target = int(ds.samples_mapping[i][2])
        assert len(a) + len(b) <= target <= 37
        assert len(a) >= 1 and len(b) >= 1
        truncated += sample["truncated"]
    assert truncated > len(ds) // 2


def test_masking_in_samples(zh):
    tokenizer, indexed, _, _ = zh
    ds = BertDataset(indexed, tokenizer, BertDatasetConfig(max_seq_length=128, seed=9),
                     cache_dir=None)
    predicted = real = 0
    for i in range(len(ds)):
        sample = ds[i]
        tokens = original_tokens(sample)
        where = sample["loss_mask"] == 1
        assert np.all(sample["labels"][~where] == -1)
        assert np.all(sample["labels"][where] >= 0)
        assert not np.isin(tokens[where], [tokenizer.cls, tokenizer.sep, tokenizer.pad]).any()
        assert np.all(sample["padding_mask"][where] == 1)
        predicted += where.sum()
        real += sample["padding_mask"].sum()
        assert sample["text"].dtype == np.int64 and sample["labels"].dtype == np.int64
    assert 0.12 < predicted / real < 0.16


def test_deterministic_per_index_and_seed(zh, tmp_path):
    tokenizer, indexed, _, _ = zh
    config = BertDatasetConfig(max_seq_length=64, seed=21)
    first = BertDataset(indexed, tokenizer, config, cache_dir=str(tmp_path))
    again = BertDataset(indexed, tokenizer, config, cache_dir=str(tmp_path))  # from the cache
    other = BertDataset(indexed, tokenizer, BertDatasetConfig(max_seq_length=64, seed=22),
                        cache_dir=str(tmp_path))
    assert any(name.endswith("samples_mapping.npy") for name in os.listdir(tmp_path))
    np.testing.assert_array_equal(first.samples_mapping, again.samples_mapping)
    for i in (0, 7, len(first) - 1):
        x, y = first[i], again[i]
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(first[i]["text"], other[i]["text"]) for i in range(5))


def test_document_range_limits_the_split(zh):
    tokenizer, indexed, _, _ = zh
    ds = BertDataset(indexed, tokenizer, BertDatasetConfig(max_seq_length=128),
                     document_range=(10, 20), cache_dir=None, split_name="valid")
    docs = set(ds.samples_mapping[:, 3].tolist())
    assert docs and docs <= set(range(10, 20))
    # NSP partners are drawn from the split too
    assert set(ds._nsp_documents.tolist()) <= set(range(10, 20))
    with pytest.raises(DataError, match="valid split"):
        BertDataset(indexed, tokenizer, BertDatasetConfig(), document_range=(10, 999),
                    cache_dir=None, split_name="valid")


def test_user_errors_are_one_sentence(zh):
    tokenizer, indexed, _, _ = zh
    with pytest.raises(DataError, match="whole_word_masking"):
        BertDatasetConfig(whole_word_masking="chinese")
    with pytest.raises(DataError, match="two documents"):
        BertDataset(indexed, tokenizer, BertDatasetConfig(), document_range=(3, 4), cache_dir=None)


def test_chinese_wwm_masks_jieba_words_whole_at_sample_time(zh):
    tokenizer, indexed, docs_text, docs_ids = zh
    inv = tokenizer.inv_vocab
    # flags rebuilt from ids agree with flags from the original text almost everywhere
    agree = total = 0
    for sentences, ids in zip(docs_text, docs_ids):
        for text, sentence in zip(sentences, ids):
            from_text = chinese_wwm.word_start_flags(text, sentence, inv)
            from_ids = chinese_wwm.word_start_flags_from_ids(sentence, inv)
            agree += sum(x == y for x, y in zip(from_text, from_ids))
            total += len(sentence)
    assert agree / total > 0.99

    ds = BertDataset(indexed, tokenizer,
                     BertDatasetConfig(max_seq_length=256, whole_word_masking="jieba",
                                       sentence_order_prediction=True, seed=4, num_samples=200),
                     cache_dir=None)
    multi = checked = 0
    for i in range(len(ds)):
        sample = ds[i]
        if sample["truncated"]:
            continue
        checked += 1
        start, end = (int(x) for x in ds.samples_mapping[i][:2])
        a, b = segments(sample, tokenizer)
        sentences = [indexed[s].tolist() for s in range(start, end)]
        split = next(k for k in range(1, len(sentences) + 1)
                     if len(flat(sentences[:k])) == len(b if sample["is_random"] else a))
        first, second = sentences[:split], sentences[split:]
        if sample["is_random"]:
            first, second = second, first
        # word starts as the dataset sees them: per sentence; specials start words
        flags = [True] + flat(chinese_wwm.word_start_flags_from_ids(s, inv) for s in first) \
            + [True] + flat(chinese_wwm.word_start_flags_from_ids(s, inv) for s in second) + [True]
        n = len(flags)
        masked = set(np.nonzero(sample["loss_mask"])[0].tolist())
        for p in masked:
            s = p
            while not flags[s]:
                s -= 1
            e = p + 1
            while e < n and not flags[e]:
                e += 1
            assert set(range(s, e)) <= masked, f"sample {i}: word {s}:{e} only partly masked"
            multi += e - s > 1
    assert checked > 80 and multi > 100


def test_sentence_corpus_regenerated_under_the_same_name_gets_a_new_mapping(tmp_path):
    """Same prefix, documents and sentences counted alike, same tokens: only the order
    (and so the lengths and boundaries the mapping is built from) differs."""
    tokenizer = bert_chinese_tokenizer()
    prefix, _, docs_ids = write_zh_sentence_dataset(tmp_path, tokenizer)
    args = dict(document_range=None, max_num_tokens=61, short_seq_prob=0.1, min_sentences=2,
                seed=3, num_samples=None, class_name="BertDataset", split_name="train")
    cache = str(tmp_path / "cache")
    old = sentence_sample_mapping(IndexedDataset(prefix), cache_dir=cache, **args)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for ids in reversed(docs_ids):
        for sentence in ids:
            builder.add_item(sentence)
        builder.end_document()
    builder.finalize(prefix + ".idx")
    regenerated = IndexedDataset(prefix)
    new = sentence_sample_mapping(regenerated, cache_dir=cache, **args)
    fresh = sentence_sample_mapping(regenerated, cache_dir=None, **args)
    assert not np.array_equal(old, fresh)
    np.testing.assert_array_equal(new, fresh)
    assert len([n for n in os.listdir(cache) if n.endswith("samples_mapping.npy")]) == 2
