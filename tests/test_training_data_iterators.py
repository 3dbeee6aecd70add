"""Micro-batch iterators: global batch k holds the same samples at every DP / micro-batch size,
resumes at the consumed-samples count, follows a ramped batch size, and reaches the
tensor-parallel peers of the reading rank through broadcast_data (real gloo processes)."""
import pathlib

import numpy as np
import pytest
import torch

from megatron_core.errors import DataError
from tests.harness import run_distributed
from tests.harness.tiny_corpus import BERT_VOCAB, preprocess_zh_news
from megatron_core.training.batches import get_batch_gpt
from megatron_core.training.config import DataConfig, TrainingConfig
from megatron_core.training.data_iterators import (DataParallelPosition, ReceiveFromTensorParallelSource,
                                                   build_data_iterators)
from megatron_core.training.data_providers import gpt_datasets
from megatron_core.training.microbatches import BatchSchedule

LAYOUTS = [(1, 4), (2, 2), (2, 1), (4, 1)]   # (data-parallel size, micro-batch size)
GLOBAL = 8
SEQ = 16


def build_gpt_train(directory):
    preprocess_zh_news(str(directory))
    return open_gpt_train(directory)


def open_gpt_train(directory):
    data = DataConfig(data_path=[str(directory / "zh_text_document")], split="1",
                      data_cache_path=str(directory / "cache"),
                      tokenizer_type="BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    training = TrainingConfig(micro_batch_size=1, global_batch_size=GLOBAL, seq_length=SEQ, train_iters=6,
                              eval_interval=1000, eval_iters=0)
    train, _, _ = gpt_datasets(data, training, [200, 0, 0])
    return train


@pytest.fixture(scope="module")
def gpt_train(tmp_path_factory):
    return build_gpt_train(tmp_path_factory.mktemp("gpt"))


def rows(samples):
    """A batch's rows as a sorted list of tuples: what a global batch holds, whatever the order."""
    return sorted(tuple(row) for row in samples)


def expected_global_batch(dataset, begin, size):
    """The reference: global batch = dataset samples [begin, begin + size), read straight from the dataset."""
    return rows(dataset[i]["text"].tolist() for i in range(begin, begin + size))


def read_global_batches(dataset, dp, mbs, schedule, num_steps, consumed=0):
    """Every DP rank's iterator simulated in this process; per step the rows the job read."""
    iterators = [build_data_iterators((dataset, None, None), mbs, consumed,
                                      position=DataParallelPosition(r, dp)).train for r in range(dp)]
    batches = []
    for _ in range(num_steps):
        pulls = schedule.num_microbatches_at(consumed)
        step = [row for it in iterators for _ in range(pulls) for row in next(it)["text"].tolist()]
        consumed += pulls * mbs * dp
        batches.append(rows(step))
    return batches


@pytest.mark.parametrize("dp,mbs", LAYOUTS)
def test_global_batch_k_is_samples_k_g_to_k_plus_1_g_at_every_layout(gpt_train, dp, mbs):
    schedule = BatchSchedule(GLOBAL, mbs, dp)
    got = read_global_batches(gpt_train, dp, mbs, schedule, 5)
    for k, batch in enumerate(got):
        assert batch == expected_global_batch(gpt_train, k * GLOBAL, GLOBAL), f"global batch {k}"


@pytest.mark.parametrize("dp,mbs", LAYOUTS)
def test_ramped_global_batches_follow_the_consumed_samples(gpt_train, dp, mbs):
    # start 4, +4 every 8 samples up to 12: sizes 4, 4, 8, 12, 12 (Megatron's ramp-up arithmetic)
    schedule = BatchSchedule(12, mbs, dp, rampup_batch_size=(4, 4, 16))
    got = read_global_batches(gpt_train, dp, mbs, schedule, 5)
    begin = 0
    for k, size in enumerate([4, 4, 8, 12, 12]):
        assert got[k] == expected_global_batch(gpt_train, begin, size), f"ramped global batch {k}"
        begin += size


@pytest.mark.parametrize("dp,mbs", LAYOUTS)
def test_resume_from_consumed_samples_continues_at_the_next_sample(gpt_train, dp, mbs):
    schedule = BatchSchedule(GLOBAL, mbs, dp)
    uninterrupted = read_global_batches(gpt_train, dp, mbs, schedule, 5)
    resumed = read_global_batches(gpt_train, dp, mbs, schedule, 2, consumed=3 * GLOBAL)
    assert resumed == uninterrupted[3:5]


def test_resume_at_another_data_parallel_size_reads_the_same_global_batches(gpt_train):
    before = read_global_batches(gpt_train, 1, 4, BatchSchedule(GLOBAL, 4, 1), 4)
    after = read_global_batches(gpt_train, 4, 1, BatchSchedule(GLOBAL, 1, 4), 2, consumed=2 * GLOBAL)
    assert after == before[2:]


def test_only_the_chunks_that_need_data_read_it():
    # 4 stages, 2 virtual chunks each: the first chunk of stage 0 and the last chunk of stage 3
    reads = {(p, c): DataParallelPosition(pipeline_rank=p, pipeline_size=4, num_chunks=2).chunk_reads_data(c, False)
             for p in range(4) for c in range(2)}
    assert [key for key, value in reads.items() if value] == [(0, 0), (3, 1)]
    assert all(DataParallelPosition(pipeline_rank=p, pipeline_size=4).chunk_reads_data(0, True) for p in range(4))
    dataset = [{"text": np.arange(3)}] * 8
    middle = build_data_iterators((dataset, dataset, None), 2, position=DataParallelPosition(pipeline_rank=1,
                                                                                            pipeline_size=3))
    assert middle.train is None and middle.valid is None and middle.test is None
    peer = build_data_iterators((dataset, None, None), 2, position=DataParallelPosition(tensor_parallel_rank=1))
    assert isinstance(peer.train, ReceiveFromTensorParallelSource)
    chunks = build_data_iterators((dataset, None, None), 2, every_stage=True,
                                  position=DataParallelPosition(pipeline_rank=1, pipeline_size=2, num_chunks=2))
    assert isinstance(chunks.train, list) and len(chunks.train) == 2 and all(chunks.train)


def test_a_dataset_already_consumed_is_one_sentence(gpt_train):
    with pytest.raises(DataError, match="already consumed"):
        build_data_iterators((gpt_train, None, None), 2, consumed_train_samples=len(gpt_train))


# --- real processes: TP=2 x DP=2 on gloo -----------------------------------------------------------

def _check_tp_broadcast(directory, mbs):
    import torch.distributed as dist
    from megatron_core import mpu
    mpu.initialize_model_parallel(tensor_model_parallel_size=2)
    dataset = open_gpt_train(pathlib.Path(directory))
    dp_rank, dp = mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()
    iterators = build_data_iterators((dataset, None, None), mbs, consumed_train_samples=GLOBAL)
    reads = not isinstance(iterators.train, ReceiveFromTensorParallelSource)
    assert reads == (mpu.get_tensor_model_parallel_rank() == 0)
    pulls = GLOBAL // (mbs * dp)
    for k in (1, 2, 3):
        mine = torch.cat([get_batch_gpt(iterators.train, eod=None).tokens for _ in range(pulls)])
        # TP peers hold the same tensors ...
        peers = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(peers, mine, group=mpu.get_tensor_model_parallel_group())
        assert torch.equal(peers[0], peers[1])
        # ... and the DP ranks together hold global batch k: samples [kG, (k+1)G), each once
        everyone = [torch.empty_like(mine) for _ in range(dp)]
        dist.all_gather(everyone, mine, group=mpu.get_data_parallel_group())
        got = rows(torch.cat(everyone).tolist())
        want = rows(dataset[i]["text"][:-1].tolist() for i in range(k * GLOBAL, (k + 1) * GLOBAL))
        assert got == want, f"rank {dist.get_rank()}: global batch {k}"
    # The reading rank running out stops its peer with the same sentence instead of a hang.
    tiny = [{"text": np.arange(4) + dp_rank}] * 4
    short = build_data_iterators((tiny, None, None), 2)
    get_batch_gpt(short.train, eod=None)
    with pytest.raises(DataError, match="ran out"):
        get_batch_gpt(short.train, eod=None)


@pytest.mark.parametrize("mbs", [1, 2])
def test_tp2_dp2_peers_receive_the_reading_ranks_batch_and_dp_ranks_share_global_batches(tmp_path, mbs):
    build_gpt_train(tmp_path)   # preprocess and cache the indices once, before the processes start
    run_distributed(_check_tp_broadcast, 4, str(tmp_path), mbs)


def _check_every_stage_broadcast(directory):
    import torch.distributed as dist
    from megatron_core import mpu
    from megatron_core.training.batches import get_batch_bert
    from megatron_core.training.data_options import DataOptions
    from megatron_core.training.data_providers import bert_datasets, build_tokenizer
    mpu.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    data = DataConfig(data_path=[str(pathlib.Path(directory) / "zh_text_sentence")], split="1",
                      data_cache_path=str(pathlib.Path(directory) / "cache"),
                      tokenizer_type="BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    training = TrainingConfig(micro_batch_size=2, global_batch_size=2, seq_length=32, train_iters=2)
    train = bert_datasets(data, training, DataOptions(), build_tokenizer(data), [8, 0, 0])[0]
    iterators = build_data_iterators((train,), 2, every_stage=True)   # BERT: pretrain_bert.TRAIN_SPEC
    assert isinstance(iterators.train, ReceiveFromTensorParallelSource) == (mpu.get_tensor_model_parallel_rank() != 0)
    for k in range(2):
        batch = get_batch_bert(iterators.train)
        everyone = [torch.empty_like(batch.tokens) for _ in range(4)]
        dist.all_gather(everyone, batch.tokens)
        want = torch.tensor(np.stack([train[i]["text"] for i in (2 * k, 2 * k + 1)]))
        assert all(torch.equal(t, want) for t in everyone), f"micro-batch {k}"


def test_bert_batch_reaches_every_tp_rank_of_every_pipeline_stage(tmp_path):
    preprocess_zh_news(str(tmp_path), split_sentences=True)
    run_distributed(_check_every_stage_broadcast, 4, str(tmp_path))
