"""Resharding the sources the other reshard tests do not save: an fp16 run with the
distributed optimizer at DP=2 (optimizer shards over the data-parallel ranks, fp32 master
weights beside the half weights), and a virtual-pipeline run (model chunks model0,
model1 on each pipeline rank).

Each source run trains 8 iterations and saves at iteration 5 on the way, so its own
iterations 6-8 are the uninterrupted reference for a resume from that save at another
layout (every layout is the serial model, split). Separately, change_mp's per-parameter
fp32 masters are compared with the masters gathered by hand from the source's shard files
(their `params` entries name each position's parameter and elements): the master copy,
not the half weights, is what carries. The runs fork their ranks (entry_points.run_ranks);
change_mp's main runs in this process (testing/tool_main.py; its CLI is run in
tests/test_reshard_resume.py and tests/test_reshard_offline.py).
"""
import os
import shutil

import pytest
import torch

from megatron_core.mpu.sharding_map import ShardingMap, merge_tensor_parallel
from tests.harness.entry_points import failure_report, logged_values
from tests.harness.layout_runs import run_gpt_layout
from tests.harness.tool_main import run_tool_main

ITERS, SAVED_AT = 8, 5


def _run(corpus, tp, pp, dp, *extra):
    return run_gpt_layout(corpus, tp, pp, dp, *extra, iters=ITERS)


def _train_and_keep_iteration_5(corpus, root, tp, pp, dp, *extra):
    """(a --save directory whose tracker names iteration 5, the run's losses)."""
    done = _run(corpus, tp, pp, dp, "--save", os.path.join(root, "run"), "--save-interval", str(SAVED_AT), *extra)
    at5 = os.path.join(root, "at5")
    shutil.copytree(os.path.join(root, "run", f"iter_{SAVED_AT:07d}"), os.path.join(at5, f"iter_{SAVED_AT:07d}"))
    with open(os.path.join(at5, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(f"{SAVED_AT}\n")
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == list(range(1, ITERS + 1)), failure_report(done)
    return at5, {"losses": losses, "consumed": logged_values(done.stdout, "consumed samples")}


@pytest.fixture(scope="module")
def fp16_distributed(gpt_corpus, tmp_path_factory):
    return _train_and_keep_iteration_5(gpt_corpus, str(tmp_path_factory.mktemp("fp16_dist")), 1, 1, 2, "--fp16", "--initial-loss-scale", "1024",
                                       "--use-distributed-optimizer")


@pytest.fixture(scope="module")
def virtual_pipeline(gpt_corpus, tmp_path_factory):
    return _train_and_keep_iteration_5(gpt_corpus, str(tmp_path_factory.mktemp("virtual")), 1, 2, 1,
                                       "--num-layers-per-virtual-pipeline-stage", "1")


def _change_mp(*args):
    run_tool_main("change_mp.py", *args)


def _assert_losses(done, reference, rel):
    """Iterations 6-8 continue the run: the same consumed-samples count (the data goes on at
    sample 40 of the one global order, whatever the new layout) and the same losses (the
    same samples, weights and optimizer state)."""
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == [6, 7, 8], failure_report(done)
    consumed = logged_values(done.stdout, "consumed samples")
    assert consumed == {i: reference["consumed"][i] for i in (6, 7, 8)} == {i: 8 * i for i in (6, 7, 8)}, consumed
    for iteration, loss in losses.items():
        assert loss == pytest.approx(reference["losses"][iteration], rel=rel), (iteration, losses, reference)


def _load(path):
    return torch.load(path, weights_only=True)


def test_distributed_fp16_shards_reshard_on_load_to_the_plain_optimizer_and_log_the_run_losses(
        gpt_corpus, fp16_distributed):
    directory, reference = fp16_distributed
    done = _run(gpt_corpus, 1, 1, 2, "--fp16", "--load", directory)
    assert f"resharded checkpoint iteration {SAVED_AT} from TP=1 PP=1 DP=2 to TP=1 PP=1 DP=2 on load" in done.stdout
    _assert_losses(done, reference, 1e-5)


def test_distributed_fp16_shards_change_mp_to_tp2_keeps_the_fp32_masters_and_resumes(
        gpt_corpus, fp16_distributed, tmp_path):
    directory, reference = fp16_distributed
    output = str(tmp_path / "tp2")
    _change_mp(directory, "--target-tensor-parallel-size", "2", "--target-data-parallel-size", "1",
               "--output", output)
    # The masters by hand: each DP shard file's positions name (chunk, parameter, first, end, has master).
    source = os.path.join(directory, f"iter_{SAVED_AT:07d}", "mp_rank_00")
    model = _load(os.path.join(source, "model_optim_rng.pt"))["model"]
    masters = {name: torch.zeros(value.numel(), dtype=torch.float32) for name, value in model.items()}
    for d in range(2):
        optimizer = _load(os.path.join(source, f"distrib_optim_dp_{d:03d}.pt"))["optimizer"]
        copies = iter(optimizer["fp32_master_weights"])
        for chunk, name, first, end, has_master in optimizer["params"]:
            assert has_master
            masters[name][first:end] = next(copies).reshape(-1)
    files = [_load(os.path.join(output, f"iter_{SAVED_AT:07d}", f"mp_rank_{t:02d}", "model_optim_rng.pt"))
             for t in range(2)]
    smap = ShardingMap.from_dict(files[0]["sharding_map"]["model"])
    per_parameter = [f["optimizer"]["per_parameter"]["model"] for f in files]
    merged = merge_tensor_parallel([{k: v["fp32_master"] for k, v in p.items()} for p in per_parameter], smap)
    moved = 0
    for name, master in merged.items():
        assert master.dtype == torch.float32
        assert torch.equal(master.reshape(-1), masters[name]), name
        moved += int(not torch.equal(master, model[name].float()))
    assert moved > 0        # the masters are not the half weights upcast
    done = _run(gpt_corpus, 2, 1, 1, "--fp16", "--load", output)
    assert "resharded" not in done.stdout
    _assert_losses(done, reference, 1e-4)


def test_virtual_pipeline_chunks_change_mp_to_tp2_one_stage_and_resume(gpt_corpus, virtual_pipeline, tmp_path):
    directory, reference = virtual_pipeline
    output = str(tmp_path / "tp2pp1")
    _change_mp(directory, "--target-tensor-parallel-size", "2", "--output", output)
    state = _load(os.path.join(output, f"iter_{SAVED_AT:07d}", "mp_rank_00", "model_optim_rng.pt"))
    assert state["args"]["num_layers_per_virtual_pipeline_stage"] is None and "model0" not in state
    done = _run(gpt_corpus, 2, 1, 1, "--load", output)
    assert "resharded" not in done.stdout
    _assert_losses(done, reference, 1e-5)
