"""Dataset providers: Megatron's sample counts, blended --data-path weights honoured, the
Transformer-XL stream property at every DP / micro-batch size, the family flags."""
import argparse

import numpy as np
import pytest

from megatron_core.errors import DataError
from megatron_core.data.indexed_dataset import IndexedDataset
from megatron_core.errors import ConfigError
from tests.harness.tiny_corpus import BERT_VOCAB, preprocess_zh_news
from megatron_core.training.config import DataConfig, TrainingConfig
from megatron_core.training.data_iterators import DataParallelPosition, build_data_iterators
from megatron_core.training.data_options import (DataOptions, add_data_options_arguments,
                                                 data_options_from_args)
from megatron_core.training.data_providers import (bert_datasets, build_tokenizer, gpt_datasets, t5_sentinel_ids,
                                                   train_valid_test_num_samples, transformer_xl_datasets)

pytestmark = pytest.mark.quick


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The news slice as two corpora (paragraphs 0-99 and 100-199), as documents and as sentences."""
    directory = tmp_path_factory.mktemp("corpora")
    made = {}
    for sentences in (False, True):
        made[sentences] = [preprocess_zh_news(str(directory / f"{part}"), sentences, name=part, first=first,
                                              stop=first + 100) for part, first in (("a", 0), ("b", 100))]
    return directory, made


def data_config(directory, data_path, split="1"):
    return DataConfig(data_path=data_path, split=split, data_cache_path=str(directory / "cache"),
                      tokenizer_type="BertWordPieceLowerCase", vocab_file=BERT_VOCAB)


def test_sample_counts_are_megatrons():
    training = TrainingConfig(global_batch_size=8, train_iters=10, eval_interval=5, eval_iters=2)
    # valid and test: (10 // 5 + 1) evaluations x 2 iterations x 8 samples
    assert train_valid_test_num_samples(training) == [80, 48, 48]
    training = TrainingConfig(global_batch_size=8, train_iters=3, train_samples=30, eval_interval=100, eval_iters=1)
    assert train_valid_test_num_samples(training) == [30, 8, 8]


def test_gpt_blend_weights_are_honoured(corpora):
    directory, made = corpora
    a, b = made[False]
    training = TrainingConfig(global_batch_size=1, seq_length=16, train_iters=1)
    train, valid, test = gpt_datasets(data_config(directory, ["0.3", a, "0.7", b], "90,10,0"), training,
                                      [400, 40, 0])
    assert test is None and len(train) == 400 and len(valid) == 40
    ids = np.array([train[i]["dataset_id"] for i in range(400)])
    for n in (10, 100, 400):   # after any n samples each corpus has given its share to within one sample
        assert abs((ids[:n] == 0).sum() - 0.3 * n) <= 1
    # sample i of the blend is text of the corpus it names: each run of tokens between
    # end-of-document tokens occurs in that corpus (and a long one only there)
    eod = build_tokenizer(data_config(directory, None)).eod
    raw = [IndexedDataset(p).tokens.astype(np.int64).tobytes() for p in (a, b)]
    for i in range(0, 400, 37):
        pieces = np.split(train[i]["text"], np.flatnonzero(train[i]["text"] == eod) + 1)
        longest = max(pieces, key=len)
        assert all(piece.tobytes() in raw[ids[i]] for piece in pieces if len(piece))
        assert len(longest) < 6 or longest.tobytes() not in raw[1 - ids[i]]


def test_bert_blend_weights_are_honoured(corpora):
    directory, made = corpora
    a, b = made[True]
    data = data_config(directory, ["1", a, "3", b], "1")
    tokenizer = build_tokenizer(data)
    training = TrainingConfig(global_batch_size=1, seq_length=32, train_iters=1)
    train, _, _ = bert_datasets(data, training, DataOptions(), tokenizer, [80, 0, 0])
    ids = np.array([train[i]["dataset_id"] for i in range(80)])
    assert abs((ids == 1).sum() - 60) <= 1 and set(train[0]) >= {"text", "types", "labels", "is_random"}


def test_an_empty_split_is_none_and_a_missing_prefix_is_one_sentence(corpora):
    directory, made = corpora
    a, b = made[True]
    data = data_config(directory, ["1", a, "1", b], "100,0,0")
    training = TrainingConfig(global_batch_size=1, seq_length=32, train_iters=1)
    tokenizer = build_tokenizer(data)
    assert bert_datasets(data, training, DataOptions(), tokenizer, [8, 8, 0])[1] is None
    with pytest.raises(DataError, match="no dataset at .*missing.*preprocess_data.py"):
        bert_datasets(data_config(directory, [str(directory / "missing")]), training, DataOptions(), tokenizer,
                      [8, 0, 0])


def stream_of(dataset):
    """The reference stream: the split's documents in the dataset's epoch order, read from the raw data."""
    indexed = dataset.indexed_dataset
    return np.concatenate([indexed[int(d)] for d in dataset.doc_idx]).astype(np.int64)


@pytest.mark.parametrize("dp,mbs", [(1, 4), (2, 2), (2, 1), (4, 1)])
def test_transformer_xl_row_i_of_iteration_k_plus_1_continues_row_i_of_iteration_k(corpora, dp, mbs):
    directory, made = corpora
    seq, global_batch, steps = 8, 8, 4
    training = TrainingConfig(micro_batch_size=mbs, global_batch_size=global_batch, seq_length=seq, train_iters=steps)
    train, _, _ = transformer_xl_datasets(data_config(directory, [made[False][0]]), training,
                                          [steps * global_batch, 0, 0])
    stream = stream_of(train)
    pulls = global_batch // (mbs * dp)
    iterators = [build_data_iterators((train,), mbs, position=DataParallelPosition(r, dp)).train for r in range(dp)]
    # slot (rank, micro-batch, row) -> the texts it read, iteration after iteration
    texts = {}
    for _ in range(steps):
        for r, it in enumerate(iterators):
            for m in range(pulls):
                for i, row in enumerate(next(it)["text"].tolist()):
                    texts.setdefault((r, m, i), []).append(row)
    starts = set()
    for slot, segments in texts.items():
        # the inputs of consecutive iterations, back to back, are one contiguous piece of the stream
        joined = [t for segment in segments for t in segment[:-1]] + [segments[-1][-1]]
        begin = next(b for b in range(len(stream)) if stream[b:b + len(joined)].tolist() == joined)
        starts.add(begin)
        for k in range(1, steps):
            assert segments[k][0] == segments[k - 1][-1], f"slot {slot}: iteration {k} does not continue"
    assert len(starts) == global_batch, "every row must read its own stream"


def test_transformer_xl_streams_are_the_same_rows_at_every_layout(corpora):
    directory, made = corpora
    training = TrainingConfig(global_batch_size=4, seq_length=8, train_iters=3)
    train, _, _ = transformer_xl_datasets(data_config(directory, [made[False][0]]), training, [12, 0, 0])
    wide = build_data_iterators((train,), 4).train
    rows_wide = [next(wide)["text"].tolist() for _ in range(3)]
    narrow = [build_data_iterators((train,), 1, position=DataParallelPosition(r, 4)).train for r in range(4)]
    rows_narrow = [[next(it)["text"].tolist()[0] for it in narrow] for _ in range(3)]
    assert rows_wide == rows_narrow


def test_transformer_xl_refuses_a_ramped_batch_and_a_blend(corpora):
    directory, made = corpora
    ramped = TrainingConfig(global_batch_size=8, rampup_batch_size=(4, 4, 16), seq_length=8, train_iters=3)
    with pytest.raises(DataError, match="--rampup-batch-size"):
        transformer_xl_datasets(data_config(directory, [made[False][0]]), ramped, [24, 0, 0])
    fixed = TrainingConfig(global_batch_size=8, seq_length=8, train_iters=3)
    with pytest.raises(DataError, match="one prefix"):
        transformer_xl_datasets(data_config(directory, ["1", made[False][0], "1", made[False][1]]), fixed,
                                [24, 0, 0])


def test_t5_sentinels_from_extra_ids_or_bert_unused_slots(corpora):
    directory, _ = corpora
    plain = build_tokenizer(data_config(directory, None))
    assert t5_sentinel_ids(plain)[:2] == [plain.vocab["[unused1]"], plain.vocab["[unused2]"]]
    extra = data_config(directory, None)
    extra.vocab_extra_ids = 3
    with_extra = build_tokenizer(extra)
    assert t5_sentinel_ids(with_extra) == [with_extra.vocab[f"<extra_id_{n}>"] for n in range(3)]


def test_family_flags_fill_data_options():
    parser = add_data_options_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--reset-position-ids", "--eod-mask-loss", "--bert-no-binary-head", "--wwm",
                              "--mask-prob", "0.2", "--decoder-seq-length", "64", "--dataloader-type", "cyclic"])
    options = data_options_from_args(args)
    assert options == DataOptions(reset_position_ids=True, eod_mask_loss=True, bert_binary_head=False, wwm=True,
                                  mask_prob=0.2, decoder_seq_length=64, dataloader_type="cyclic")
    with pytest.raises(ConfigError, match="--mask-prob"):
        DataOptions(mask_prob=1.5)
