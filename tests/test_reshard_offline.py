"""Resharding's pieces with no process group: one target shard read from source shards
by index arithmetic equals splitting the merged tensor (any sizes, strides, dimensions);
vocabulary re-padding keeps the true rows bit for bit (TP1 -> TP3 -> TP1); the streaming
writer's files are torch.save files that load safely and memory-mapped; and a pickle
payload in a checkpoint given to tools/change_mp.py is refused with no code run."""
import os
import subprocess
import sys

import pytest
import torch

from megatron_core.mpu.layout import merge_shards, pad_vocab_size, shard_tensor
from megatron_core.mpu.sharding_map import ShardSpec
from tests.harness.entry_points import ROOT, clean_env
from megatron_core.checkpoint.reshard.slices import read_shard
from megatron_core.checkpoint.reshard.streaming_writer import LazyTensor, save_streamed

pytestmark = pytest.mark.quick


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dim", [0, 1])
def test_a_target_shard_read_from_the_sources_is_the_split_of_the_merged_tensor(stride, dim):
    full = torch.randn(72, 36) if dim == 0 else torch.randn(36, 72)
    spec = ShardSpec(split_dim=dim, stride=stride)
    for source_size in (1, 2, 3, 4, 6):
        sources = [shard_tensor(full, dim, r, source_size, stride) for r in range(source_size)]
        assert torch.equal(merge_shards(sources, dim, stride), full)
        for target_size in (1, 2, 3, 4, 6, 12):
            for rank in range(target_size):
                got = read_shard(spec, lambda s: sources[s], source_size, rank, target_size)
                assert torch.equal(got, shard_tensor(full, dim, rank, target_size, stride)), \
                    (source_size, target_size, rank)
                assert got.untyped_storage().data_ptr() not in {s.untyped_storage().data_ptr() for s in sources}


def test_replicated_tensors_are_copied_not_shared():
    source = torch.randn(5)
    got = read_shard(ShardSpec(), lambda s: source, 2, 1, 4)
    assert torch.equal(got, source) and got.data_ptr() != source.data_ptr()


def test_vocabulary_tp1_to_tp3_to_tp1_keeps_the_true_rows_bit_for_bit():
    vocab, hidden = 50, 4
    padded_tp1 = pad_vocab_size(vocab, 8, 1)     # 56
    padded_tp3 = pad_vocab_size(vocab, 8, 3)     # 72: 56 does not split over 3 ranks
    assert padded_tp1 % 3 != 0 and padded_tp3 % 3 == 0
    table = torch.randn(padded_tp1, hidden)
    spec = ShardSpec(split_dim=0, vocab=True)
    tp3 = [read_shard(spec, lambda s: table, 1, r, 3, target_length=padded_tp3) for r in range(3)]
    assert all(t.shape == (padded_tp3 // 3, hidden) for t in tp3)
    merged = torch.cat(tp3)
    assert torch.equal(merged[:padded_tp1], table) and not merged[padded_tp1:].any()   # new rows are zeros
    back = read_shard(spec, lambda s: tp3[s], 3, 0, 1, target_length=padded_tp1)
    assert torch.equal(back[:vocab], table[:vocab]) and torch.equal(back, table)


def test_streamed_files_load_safely_and_memory_mapped(tmp_path):
    weights = torch.randn(6, 4)
    halves = torch.arange(12, dtype=torch.bfloat16)
    made = []

    def make():
        made.append(True)
        return weights * 2

    state = {"model": {"w": LazyTensor((6, 4), torch.float32, make), "view": halves[3:7]},
             "step": torch.tensor(5.0), "args": {"lr": 0.1, "name": "gpt", "none": None}, "list": [1, (2, 3)]}
    path = str(tmp_path / "out.pt")
    save_streamed(state, path)
    assert made == [True]
    for mmap in (False, True):
        got = torch.load(path, weights_only=True, mmap=mmap)
        assert torch.equal(got["model"]["w"], weights * 2) and torch.equal(got["model"]["view"], halves[3:7])
        assert got["step"] == 5.0 and got["args"] == state["args"] and got["list"] == [1, (2, 3)]
    assert sorted(os.listdir(tmp_path)) == ["out.pt"]    # no temporary left behind


def test_a_lazy_tensor_that_breaks_its_promise_leaves_no_file(tmp_path):
    path = str(tmp_path / "out.pt")
    with pytest.raises(ValueError, match="promised"):
        save_streamed({"w": LazyTensor((2, 2), torch.float32, lambda: torch.zeros(3))}, path)
    assert os.listdir(tmp_path) == []


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_change_mp_refuses_a_pickle_payload_and_runs_none_of_it(tmp_path):
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "ckpt"
    (checkpoint / "iter_0000001" / "mp_rank_00").mkdir(parents=True)
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("1\n")
    torch.save({"model": {"w": torch.zeros(2)}, "evil": _Payload(str(marker))},
               str(checkpoint / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "change_mp.py"), str(checkpoint), "2"],
                          capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pickle payload" in done.stderr and "no code from it ran" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not os.path.exists(str(checkpoint) + "_MP2")
