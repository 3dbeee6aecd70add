"""Megatron-LM's torch_dist checkpoints, judged by NVIDIA's megatron-core itself.

One module fixture runs megatron-core on the CPU in three forked worlds and leaves files:
  world 1, TP=1: megatron-core saves each model (gpt2, llama, bert); write_torch_dist writes
                 its state dict, which megatron-core loads into a freshly built model
  world 2, TP=2: megatron-core saves; each rank writes its shards with write_torch_dist_shards;
                 megatron-core loads the TP=1 file written above; then PP=2 (llama) saves
  world 1, TP=1: megatron-core loads the TP=2 and PP=2 saves (its own resharding) and ours
The tests compare those files in this process.
"""
import argparse
import os
import shutil

import pytest
import torch

pytest.importorskip("megatron.core")

from megatron_core.checkpoint.megatron_lm import torch_dist_keys  # noqa: E402
from megatron_core.checkpoint.megatron_lm.torch_dist import (  # noqa: E402
    Shard, read_torch_dist, write_torch_dist, write_torch_dist_shards)
from megatron_core.errors import CheckpointError  # noqa: E402
from tests.harness import mcore_cpu  # noqa: E402
from tests.harness.distributed import run_distributed  # noqa: E402

FAMILIES = ("gpt2", "llama", "bert")
COMMON = {"args": argparse.Namespace(num_layers=2, hidden_size=64, ckpt_format="torch_dist"), "iteration": 10}


@pytest.mark.quick
def test_layer_keys_lose_their_number_to_a_layer_axis_and_norms_take_transformer_engine_names():
    assert torch_dist_keys.checkpoint_name("decoder.layers.3.input_layernorm.weight") == (
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight", 3)
    assert torch_dist_keys.checkpoint_name("encoder.layers.0.pre_mlp_layernorm.bias") == (
        "encoder.layers.mlp.linear_fc1.layer_norm_bias", 0)
    assert torch_dist_keys.checkpoint_name("output_layer.weight") == ("output_layer.weight", None)
    assert torch_dist_keys.state_dict_name("decoder.layers.mlp.linear_fc1.layer_norm_weight", 5) == (
        "decoder.layers.5.pre_mlp_layernorm.weight")
    assert torch_dist_keys.state_dict_name("decoder.layers.7.self_attention.linear_qkv.layer_norm_weight") == (
        "decoder.layers.7.input_layernorm.weight")      # non-homogeneous layers keep their number
    assert torch_dist_keys.shifted("decoder.layers.1.mlp.linear_fc2.weight", 4) == "decoder.layers.5.mlp.linear_fc2.weight"


def _tp1_world(root):
    for family in FAMILIES:
        with mcore_cpu.megatron_world(tp=1, seed=1):
            model = mcore_cpu.build(family)
            state = mcore_cpu.full_state(model)
            torch.save(state, f"{root}/ref_{family}.pt")
            mcore_cpu.save_megatron(model, f"{root}/megatron_tp1_{family}", COMMON)
            write_torch_dist(f"{root}/ours_{family}/iter_0000010", state, COMMON)
        with mcore_cpu.megatron_world(tp=1, seed=7):
            model = mcore_cpu.build(family)
            common = mcore_cpu.load_megatron(model, f"{root}/ours_{family}/iter_0000010")
            torch.save((mcore_cpu.full_state(model), common), f"{root}/loaded_tp1_{family}.pt")


def _tp2_world(root):
    rank = torch.distributed.get_rank()
    for family in FAMILIES:
        with mcore_cpu.megatron_world(tp=2, seed=3):
            model = mcore_cpu.build(family)
            mcore_cpu.save_megatron(model, f"{root}/megatron_tp2_{family}", COMMON)
            shards = {}
            for key, local in mcore_cpu.full_state(model).items():
                split = mcore_cpu.split_of(key)
                gated = split is not None and split[1] and family == "llama"
                shards[key] = local if split is None else Shard.of_rank(local, split[0], rank, 2, gated)
            write_torch_dist_shards(f"{root}/ours_tp2_{family}", shards, COMMON)
            mcore_cpu.load_megatron(model, f"{root}/ours_{family}/iter_0000010")
            torch.save(mcore_cpu.full_state(model), f"{root}/loaded_tp2_{family}_{rank}.pt")
    with mcore_cpu.megatron_world(pp=2, seed=5):
        mcore_cpu.save_megatron(mcore_cpu.build("llama"), f"{root}/megatron_pp2_llama", COMMON)


def _megatron_loads_at_tp1(root):
    for name in [f"{kind}_tp2_{family}" for family in FAMILIES for kind in ("megatron", "ours")] + [
            "megatron_pp2_llama"]:
        with mcore_cpu.megatron_world(tp=1, seed=11):
            model = mcore_cpu.build(name.rsplit("_", 1)[1])
            mcore_cpu.load_megatron(model, f"{root}/{name}")
            torch.save(mcore_cpu.full_state(model), f"{root}/at_tp1_{name}.pt")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("torch_dist"))
    run_distributed(_tp1_world, 1, root)
    run_distributed(_tp2_world, 2, root)
    run_distributed(_megatron_loads_at_tp1, 1, root)
    return root


def _load(path):
    return torch.load(path, weights_only=False)


def assert_same_state(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_megatron_saves_at_tp1_tp2_and_pp2_read_as_the_tp1_state_dict(saved, family):
    checkpoint = read_torch_dist(f"{saved}/megatron_tp1_{family}")
    assert_same_state(dict(checkpoint.tensors), _load(f"{saved}/ref_{family}.pt"))
    assert checkpoint.common["iteration"] == 10 and checkpoint.common["args"].num_layers == 2
    assert checkpoint.extra_states_skipped == (9 if family == "bert" else 8)   # 4 linears x 2 layers (+ BERT's head)
    tp2 = read_torch_dist(f"{saved}/megatron_tp2_{family}").tensors
    assert_same_state(dict(tp2), _load(f"{saved}/at_tp1_megatron_tp2_{family}.pt"))
    if family == "llama":
        pp2 = read_torch_dist(f"{saved}/megatron_pp2_llama").tensors
        assert_same_state(dict(pp2), _load(f"{saved}/at_tp1_megatron_pp2_llama.pt"))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_written_tp1_state_dict_loads_into_megatron_at_tp1_and_tp2(saved, family):
    want = _load(f"{saved}/ref_{family}.pt")
    loaded, common = _load(f"{saved}/loaded_tp1_{family}.pt")
    assert_same_state(loaded, want)
    assert common["iteration"] == 10 and common["checkpoint_version"] == 3.0
    with open(f"{saved}/ours_{family}/latest_checkpointed_iteration.txt") as f:
        assert f.read() == "10"
    for rank in range(2):
        shards = _load(f"{saved}/loaded_tp2_{family}_{rank}.pt")
        assert_same_state(shards, {key: mcore_cpu.rank_slice(value, key, rank, 2, family == "llama")
                                   for key, value in want.items()})


@pytest.mark.parametrize("family", FAMILIES)
def test_shards_written_by_two_tp_ranks_load_into_megatron_at_tp1(saved, family):
    assert_same_state(_load(f"{saved}/at_tp1_ours_tp2_{family}.pt"),
                      _load(f"{saved}/at_tp1_megatron_tp2_{family}.pt"))


def test_a_missing_shard_file_is_named(saved, tmp_path):
    copy = shutil.copytree(f"{saved}/megatron_tp1_llama", tmp_path / "checkpoint")
    os.remove(copy / "__0_1.distcp")
    with pytest.raises(CheckpointError, match=r"__0_1\.distcp.* missing"):
        read_torch_dist(str(copy))


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_common_pt_is_refused_and_never_runs(saved, tmp_path):
    copy = shutil.copytree(f"{saved}/megatron_tp1_gpt2", tmp_path / "checkpoint")
    marker = tmp_path / "ran"
    torch.save({"args": _RunsAShellCommand(marker), "iteration": 10}, copy / "common.pt")
    with pytest.raises(CheckpointError, match=r"common\.pt.*system"):
        read_torch_dist(str(copy))
    assert not marker.exists()
