"""T5 span corruption: the encoder input and labels rebuild the original text, span
statistics, sentinels, masks, determinism and length checks."""
import numpy as np
import pytest

from megatron_core.data.indexed_dataset import IndexedDataset
from megatron_core.data.t5_dataset import (T5Dataset, T5DatasetConfig, random_spans_noise_mask,
                                           span_counts, unused_token_sentinels)
from megatron_core.errors import DataError
from tests.harness.datasets import bert_chinese_tokenizer, write_zh_sentence_dataset

pytestmark = pytest.mark.quick


@pytest.fixture(scope="module")
def zh(tmp_path_factory):
    tokenizer = bert_chinese_tokenizer(vocab_extra_ids=100)
    prefix, _, _ = write_zh_sentence_dataset(tmp_path_factory.mktemp("zh_t5"), tokenizer)
    return tokenizer, IndexedDataset(prefix)


def source_tokens(ds, i):
    start, end, target, _ = (int(x) for x in ds.samples_mapping[i])
    tokens = [t for s in range(start, end) for t in ds.indexed_dataset[s].tolist()]
    return tokens[:target], len(tokens) > target


def reconstruct(sample, sentinels, eos):
    """Put every span from the labels back in place of its sentinel in the encoder input."""
    labels = [t for t in sample["labels"].tolist() if t != -1]
    assert labels[-1] == eos
    fills, current = {}, None
    for t in labels[:-1]:
        if t in sentinels:
            current = t
            fills[current] = []
        else:
            fills[current].append(t)
    out = []
    for t in sample["text_enc"][sample["enc_mask"][0] == 1].tolist():
        out.extend(fills.pop(t) if t in sentinels else [t])
    assert not fills
    return out


def test_encoder_input_plus_labels_give_back_the_original(zh):
    tokenizer, indexed = zh
    config = T5DatasetConfig(max_seq_length=128, max_seq_length_dec=40, seed=3)
    ds = T5Dataset(indexed, tokenizer, config, cache_dir=None)
    sentinels = tokenizer.additional_special_tokens_ids
    assert ds.sentinel_ids == sentinels and ds.bos_id == tokenizer.bos and ds.eos_id == tokenizer.eos
    noise = total = spans = 0
    for i in range(len(ds)):
        sample = ds[i]
        original, truncated = source_tokens(ds, i)
        assert sample["truncated"] == int(truncated)
        assert reconstruct(sample, set(sentinels), tokenizer.eos) == original
        used = [t for t in sample["text_enc"].tolist() if t in sentinels]
        assert used == sentinels[:len(used)]  # in order, from <extra_id_0>
        n_noise, n_spans = span_counts(len(original), 0.15, 3.0)
        assert len(used) == n_spans
        noise += n_noise
        total += len(original)
        spans += n_spans
    assert abs(noise / total - 0.15) < 0.01
    assert 2.7 < noise / spans < 3.3


def test_decoder_input_is_bos_plus_shifted_labels_and_masks(zh):
    tokenizer, indexed = zh
    config = T5DatasetConfig(max_seq_length=64, max_seq_length_dec=24, seed=8)
    ds = T5Dataset(indexed, tokenizer, config, cache_dir=None)
    for i in range(0, len(ds), 5):
        s = ds[i]
        n_enc = int(s["enc_mask"][0].sum())
        n_dec = int(s["loss_mask"].sum())
        assert s["text_enc"].shape == (64,) and s["text_dec"].shape == (24,)
        assert s["text_enc"][n_enc:].tolist() == [tokenizer.pad] * (64 - n_enc)
        labels = s["labels"].tolist()
        assert labels[n_dec:] == [-1] * (24 - n_dec) and labels[n_dec - 1] == tokenizer.eos
        assert s["text_dec"].tolist() == [tokenizer.bos] + labels[:n_dec - 1] + \
            [tokenizer.pad] * (24 - n_dec)
        real_enc = np.arange(64) < n_enc
        real_dec = np.arange(24) < n_dec
        np.testing.assert_array_equal(s["enc_mask"], np.outer(real_enc, real_enc))
        np.testing.assert_array_equal(s["enc_dec_mask"], np.outer(real_dec, real_enc))
        np.testing.assert_array_equal(s["dec_mask"],
                                      np.outer(real_dec, real_dec) & np.tri(24, dtype=bool))
        for key in ("text_enc", "text_dec", "labels", "loss_mask", "enc_mask", "dec_mask",
                    "enc_dec_mask"):
            assert s[key].dtype == np.int64


def test_deterministic_per_index(zh, tmp_path):
    tokenizer, indexed = zh
    config = T5DatasetConfig(max_seq_length=96, max_seq_length_dec=32, seed=1)
    a = T5Dataset(indexed, tokenizer, config, cache_dir=str(tmp_path))
    b = T5Dataset(indexed, tokenizer, config, cache_dir=str(tmp_path))
    for i in (0, 3, len(a) - 1):
        np.testing.assert_array_equal(a[i]["text_enc"], b[i]["text_enc"])
        np.testing.assert_array_equal(a[i]["labels"], b[i]["labels"])
    c = T5Dataset(indexed, tokenizer, T5DatasetConfig(max_seq_length=96, max_seq_length_dec=32,
                                                      seed=2), cache_dir=str(tmp_path))
    assert any(not np.array_equal(a[i]["text_enc"], c[i]["text_enc"]) for i in range(5))


def test_noise_mask_spans_are_sorted_disjoint_and_exact():
    rng = np.random.RandomState(0)
    for length in (2, 3, 10, 57, 300):
        for _ in range(20):
            spans = random_spans_noise_mask(length, 0.15, 3.0, rng)
            noise, count = span_counts(length, 0.15, 3.0)
            assert len(spans) == count and sum(e - s for s, e in spans) == noise
            assert spans[0][0] >= 1 and spans[-1][1] <= length
            assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert random_spans_noise_mask(1, 0.15, 3.0, rng) == []


def test_bert_chinese_vocab_sentinels_from_unused_slots(tmp_path):
    tokenizer = bert_chinese_tokenizer()  # no <extra_id_N>
    prefix, _, _ = write_zh_sentence_dataset(tmp_path, tokenizer)
    indexed = IndexedDataset(prefix)
    config = T5DatasetConfig(max_seq_length=128, max_seq_length_dec=40)
    with pytest.raises(DataError, match="sentinel"):
        T5Dataset(indexed, tokenizer, config, cache_dir=None)
    sentinels = unused_token_sentinels(tokenizer.vocab)
    assert [tokenizer.inv_vocab[i] for i in sentinels[:2]] == ["[unused1]", "[unused2]"]
    ds = T5Dataset(indexed, tokenizer, config, cache_dir=None, sentinel_ids=sentinels)
    sample = ds[0]
    assert reconstruct(sample, set(sentinels), ds.eos_id) == source_tokens(ds, 0)[0]


def test_too_short_decoder_is_a_clear_error(zh):
    tokenizer, indexed = zh
    # 128 tokens: 19 noise tokens in 6 spans, so BOS + 19 + 6 sentinels = 26
    with pytest.raises(DataError, match="at least 26"):
        T5Dataset(indexed, tokenizer, T5DatasetConfig(max_seq_length=128, max_seq_length_dec=25),
                  cache_dir=None)
    tight = T5Dataset(indexed, tokenizer, T5DatasetConfig(max_seq_length=128, max_seq_length_dec=26),
                      cache_dir=None)
    assert max(int(tight[i]["loss_mask"].sum()) for i in range(len(tight))) == 26
