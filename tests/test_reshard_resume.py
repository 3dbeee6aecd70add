"""Resharding through pretrain_gpt.py as users run it: a checkpoint saved at (TP, PP, DP) =
(2, 2, 1) after 5 of 8 iterations is resumed at other sizes, by --load alone (resharding on
load) and after tools/change_mp.py; iterations 6-8 must log the losses of the reference.

Why the comparison is not circular. The reference is an uninterrupted serial run (1, 1, 1)
of the same 8 iterations from the same seed: no checkpoint, no resharding code in it.
The saved state at iteration 5 is that run's state up to float rounding (every layout
is the serial model, split: tests/test_training_backend_layouts.py), so the resumed run's
iteration 6 loss checks the resharded weights (it is computed before any update) and
iterations 7-8 check the resharded optimizer state (Adam moments, step) and the kept
scheduler, counters and data position. A wrong slice, a moment left fresh or a lost step
moves iteration 7 by far more than 1e-5 (a fresh optimizer does: checked by
test_a_fresh_optimizer_would_not_match). Separately, change_mp's TP=1 x PP=1 result is
compared bit for bit with the checkpoint merged by mpu.sharding_map's merge functions
(tested against the serial model in tests/test_layout_sharding.py), weights and
optimizer state. The resumed runs fork their ranks (entry_points.run_ranks), and change_mp's
main runs in this process (testing/tool_main.py) except once, as a user's CLI (the
--no-optim case).
"""
import os
import subprocess
import sys

import pytest
import torch

from megatron_core.mpu.sharding_map import ShardingMap, merge_pipeline_stages, merge_tensor_parallel
from tests.harness.entry_points import ROOT, clean_env, failure_report, logged_values
from tests.harness.layout_runs import run_gpt_layout
from tests.harness.tool_main import run_tool_main

ITERS, SAVED_AT = 8, 5


def _run(corpus, tp, pp, dp, *extra):
    return run_gpt_layout(corpus, tp, pp, dp, *extra, iters=ITERS)


@pytest.fixture(scope="module")
def saved(gpt_corpus, tmp_path_factory):
    """(checkpoint dir at (2,2,1) after iteration 5, the serial reference's losses)."""
    directory = str(tmp_path_factory.mktemp("reshard") / "ckpt")
    _run(gpt_corpus, 2, 2, 1, "--save", directory, "--save-interval", "100", "--exit-interval", str(SAVED_AT))
    reference = logged_values(_run(gpt_corpus, 1, 1, 1).stdout, "lm loss")
    assert sorted(reference) == list(range(1, ITERS + 1))
    return directory, reference


def _assert_reference_losses(done, reference):
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == [6, 7, 8], failure_report(done)
    for iteration, loss in losses.items():
        assert loss == pytest.approx(reference[iteration], rel=1e-5), (iteration, losses, reference)


LAYOUTS = [(1, 1, 2, ()), (4, 1, 1, ()), (1, 2, 2, ()), (1, 1, 2, ("--use-distributed-optimizer",))]


@pytest.mark.parametrize("tp,pp,dp,extra", LAYOUTS, ids=["1-1-2", "4-1-1", "1-2-2", "1-1-2-distributed"])
def test_resume_at_other_sizes_reshards_on_load_and_logs_the_uninterrupted_losses(gpt_corpus, saved, tp, pp, dp,
                                                                                   extra):
    directory, reference = saved
    done = _run(gpt_corpus, tp, pp, dp, "--load", directory, *extra)
    lines = [line.strip() for line in done.stdout.splitlines() if "resharded" in line]
    assert lines == [f"resharded checkpoint iteration {SAVED_AT} from TP=2 PP=2 DP=1 to TP={tp} PP={pp} DP={dp} "
                     f"on load"], done.stdout[-3000:]
    _assert_reference_losses(done, reference)


def _change_mp(*args):
    run_tool_main("change_mp.py", *args)


def _change_mp_cli(*args):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "change_mp.py"), *args], capture_output=True,
                          text=True, env=clean_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 0, failure_report(done)
    return done


@pytest.mark.parametrize("tp,pp,dp", [(1, 1, 2), (4, 1, 1), (1, 2, 2)], ids=["1-1-2", "4-1-1", "1-2-2"])
def test_resume_after_change_mp_logs_the_uninterrupted_losses(gpt_corpus, saved, tmp_path, tp, pp, dp):
    directory, reference = saved
    output = str(tmp_path / f"tp{tp}pp{pp}")
    _change_mp(directory, "--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp),
               "--target-data-parallel-size", str(dp), "--output", output)
    done = _run(gpt_corpus, tp, pp, dp, "--load", output)
    assert "resharded" not in done.stdout       # the sizes fit: an ordinary load
    _assert_reference_losses(done, reference)


def test_a_fresh_optimizer_would_not_match(gpt_corpus, saved, tmp_path):
    """The check above can fail: without the optimizer state iteration 7 moves."""
    directory, reference = saved
    output = str(tmp_path / "no_optim")
    assert "optimizer state is dropped" in _change_mp_cli(directory, "1", "--no-optim", "--output", output).stdout
    losses = logged_values(_run(gpt_corpus, 1, 1, 1, "--load", output).stdout, "lm loss")
    assert losses[6] == pytest.approx(reference[6], rel=1e-5)
    assert abs(losses[7] - reference[7]) > 1e-4 * abs(reference[7])


def _load(path):
    return torch.load(path, weights_only=True)


def test_change_mp_to_one_stage_equals_the_merge_by_the_map(saved, tmp_path):
    directory, _ = saved
    output = str(tmp_path / "tp1")
    _change_mp(directory, "--target-tensor-parallel-size", "1", "--output", output)
    files = {(t, p): _load(os.path.join(directory, f"iter_{SAVED_AT:07d}", f"mp_rank_{t:02d}_{p:03d}",
                                        "model_optim_rng.pt")) for t in range(2) for p in range(2)}
    maps = [ShardingMap.from_dict(files[(0, p)]["sharding_map"]["model"]) for p in range(2)]
    stages = [(merge_tensor_parallel([files[(t, p)]["model"] for t in range(2)], maps[p]), maps[p]) for p in range(2)]
    merged, _ = merge_pipeline_stages(stages)
    got = _load(os.path.join(output, f"iter_{SAVED_AT:07d}", "mp_rank_00", "model_optim_rng.pt"))
    assert sorted(got["model"]) == sorted(merged)
    for key, value in merged.items():
        assert torch.equal(got["model"][key], value), key
    # Optimizer: each saved position names its parameter; merge every field like its weight.
    for field in ("exp_avg", "exp_avg_sq"):
        per_stage = []
        for p in range(2):
            shards = []
            for t in range(2):
                optimizer = files[(t, p)]["optimizer"]
                values = {entry[1]: optimizer["optimizer"]["state"][i][field]
                          for i, entry in enumerate(optimizer["params"])}
                shards.append({key: values.get(key, files[(t, p)]["model"][key]) for key in maps[p].tensors})
            per_stage.append((merge_tensor_parallel(shards, maps[p]), maps[p]))
        expected, _ = merge_pipeline_stages(per_stage)
        per_parameter = got["optimizer"]["per_parameter"]["model"]
        for key, fields in per_parameter.items():
            assert torch.equal(fields[field], expected[key]), (field, key)
            assert float(fields["step"]) == SAVED_AT
    assert set(per_parameter) == {k for k in merged if "weight" in k or "bias" in k}
    assert got["iteration"] == SAVED_AT and got["opt_param_scheduler"] == files[(0, 0)]["opt_param_scheduler"]
    assert got["consumed_train_samples"] == files[(0, 0)]["consumed_train_samples"]
