"""pretrain_gpt.py run as a user runs it (plain python and torchrun) against a plain PyTorch loop.

Every layout logs, step for step, the losses of tests.harness.plain_gpt_loop: the
serial GPT trained by torch.optim.AdamW on the same samples (fp32, relative 1e-5). The plain
layouts run under torchrun; the feature runs (interleaving, sequence parallel, ZeRO-1,
overlapped buckets) fork their ranks (entry_points.run_ranks), the launcher being no part
of what they check.
"""
import os
import re
import subprocess
import sys

import pytest

from tests.harness import find_free_port
from tests.harness.entry_points import (TINY_GPT_STEPS, clean_env, failure_report, logged_values,
                                                run_entry_point, run_ranks, tiny_gpt_flags)
from tests.harness.tiny_corpus import ROOT
from megatron_core.training.train_step import SkipCounter, StepOutcome, TrainingStopped

STEPS = TINY_GPT_STEPS


@pytest.fixture
def plain_losses(plain_gpt):
    assert len(plain_gpt["losses"]) == STEPS
    return plain_gpt["losses"]


def run_pretrain(flags, nproc=None, timeout=300):
    return run_entry_point("pretrain_gpt.py", flags, nproc, timeout)


def assert_serial_losses(done, plain_losses):
    assert done.returncode == 0, failure_report(done)
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == list(range(1, STEPS + 1)), done.stdout[-2000:]
    assert losses[STEPS] < losses[1]   # it learns
    for step, expected in enumerate(plain_losses, 1):
        assert losses[step] == pytest.approx(expected, rel=1e-5), (step, losses, plain_losses)


@pytest.mark.quick
def test_single_process_without_launcher_logs_the_plain_pytorch_losses(gpt_corpus, plain_losses):
    done = run_pretrain(tiny_gpt_flags(gpt_corpus))
    assert_serial_losses(done, plain_losses)
    assert "validation loss at iteration 5 | lm loss value:" in done.stdout
    assert "MFU: n/a (CPU)" in done.stdout
    # The closing summary: the first and last training and validation losses, with their iterations.
    losses = logged_values(done.stdout, "lm loss")
    validation = float(done.stdout.split("lm loss value:")[1].split("|")[0])
    summary = re.findall(r"summary: (training|validation): lm loss (\S+) \(iteration (\d+)\) -> (\S+) "
                         r"\(iteration (\d+)\)", done.stdout)
    assert [(kind, int(a), int(b)) for kind, _, a, _, b in summary] == [("training", 1, STEPS),
                                                                         ("validation", STEPS, STEPS)], done.stdout
    (_, first, _, last, _), (_, first_val, _, last_val, _) = summary
    assert (float(first), float(last)) == (pytest.approx(losses[1], abs=1e-4), pytest.approx(losses[STEPS], abs=1e-4))
    assert float(first_val) == float(last_val) == pytest.approx(validation, abs=1e-4)


# Two-axis layouts on 4 ranks; each single axis at 2 ranks is inside one of them or a test below:
# TP=2 alone in (2,2,1) and in tp2-dp2-overlap (TP=2 x DP=2, PP=1), PP=2's 1F1B alone in (2,2,1)
# and (1,2,2), plain DP=2 in (1,2,2) (and with ZeRO-1 in zero1-dp2). A wrong single axis changes
# the losses of every layout that holds it.
# (2,2,1) starts under torchrun, as a user runs it; (1,2,2) tests the layout, so its ranks are forked
# from the warm server (torchrun itself is run by this test, tests/test_elastic_restart.py and others).
@pytest.mark.parametrize("tp,pp,dp,launcher", [(2, 2, 1, "torchrun"), (1, 2, 2, "forked")])
def test_torchrun_layout_logs_the_serial_losses(gpt_corpus, plain_losses, tp, pp, dp, launcher):
    flags = tiny_gpt_flags(gpt_corpus) + ["--tensor-model-parallel-size", str(tp),
                                          "--pipeline-model-parallel-size", str(pp)]
    done = run_pretrain(flags, nproc=tp * pp * dp) if launcher == "torchrun" else \
        run_ranks("pretrain_gpt.py", flags, tp * pp * dp)
    assert_serial_losses(done, plain_losses)


@pytest.mark.parametrize("tp,pp,extra", [
    (1, 2, ["--num-layers-per-virtual-pipeline-stage", "1"]),
    (2, 1, ["--sequence-parallel", "--recompute-granularity", "full", "--recompute-method", "uniform",
            "--recompute-num-layers", "1"]),
], ids=["virtual-pipeline", "sequence-parallel-recompute"])
def test_interleaving_sequence_parallel_and_recompute_log_the_serial_losses(gpt_corpus, plain_losses, tp, pp,
                                                                             extra):
    flags = tiny_gpt_flags(gpt_corpus) + ["--tensor-model-parallel-size", str(tp),
                                          "--pipeline-model-parallel-size", str(pp), *extra]
    assert_serial_losses(run_ranks("pretrain_gpt.py", flags, tp * pp), plain_losses)


def bucket_count(stdout):
    """Megatron's start-of-run line: how many data-parallel gradient buckets the logging rank has."""
    match = re.search(r"Number of buckets for gradient all-reduce / reduce-scatter: (\d+)", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1))


# The backend tests (test_training_backend_dp.py) cover plain, overlapped and ZeRO-1 reduction,
# alone and combined, at DP=2. Here: ZeRO-1 through the entry point, and the (2,1,2) layout
# run with overlap over several small buckets (one run for both: a broken layout or a broken
# overlap each change the losses). Plain DP=2 is in the layout test's (1,2,2) above.
@pytest.mark.parametrize("tp,extra,several_buckets", [
    (1, ["--use-distributed-optimizer"], False),
    (2, ["--overlap-grad-reduce", "--ddp-bucket-size", "20000"], True),
], ids=["zero1-dp2", "tp2-dp2-overlap-small-buckets"])
def test_distributed_optimizer_and_overlapped_buckets_at_dp2_log_the_serial_losses(
        gpt_corpus, plain_losses, tp, extra, several_buckets):
    flags = tiny_gpt_flags(gpt_corpus) + ["--tensor-model-parallel-size", str(tp), *extra]
    done = run_ranks("pretrain_gpt.py", flags, tp * 2)
    assert_serial_losses(done, plain_losses)
    # Megatron's default bucket (40M elements) holds the whole tiny model; --ddp-bucket-size splits it.
    assert (bucket_count(done.stdout) > 1) == several_buckets


def test_impossible_flags_are_one_sentence_and_exit_2_before_any_process_group(gpt_corpus):
    # WORLD_SIZE=2 with no second process: any rendezvous would hang until the timeout.
    flags = tiny_gpt_flags(gpt_corpus) + ["--pipeline-model-parallel-size", "2", "--num-layers", "3"]
    env = dict(clean_env(), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(find_free_port()))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *flags], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "--num-layers 3" in lines[0] and "--pipeline-model-parallel-size 2" in lines[0]


def test_global_batch_not_divisible_by_micro_batch_times_dp_names_the_flags(gpt_corpus):
    flags = tiny_gpt_flags(gpt_corpus) + ["--global-batch-size", "6", "--micro-batch-size", "4"]
    done = run_pretrain(flags, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --global-batch-size 6") and len(done.stderr.strip().splitlines()) == 1


def _outcome(loss, updated):
    return StepOutcome({"lm loss": loss}, updated, 1.0 if updated else None, 1024.0)


def test_nan_loss_is_reported_with_its_iteration_and_counted():
    skips = SkipCounter()
    assert skips.record(1, _outcome(2.0, True)) is None
    warning = skips.record(2, _outcome(float("nan"), False))
    assert warning.startswith("warning: iteration 2: lm loss is nan")
    assert (skips.nan, skips.skipped, skips.total_nan) == (1, 1, 1)


def test_consecutive_skipped_steps_stop_the_run_with_one_sentence():
    skips = SkipCounter(max_consecutive=3)
    skips.record(1, _outcome(2.0, False))
    skips.record(2, _outcome(2.0, True))        # an update resets the run of skips
    skips.record(3, _outcome(2.0, False))
    skips.record(4, _outcome(2.0, False))
    with pytest.raises(TrainingStopped, match=r"stopped at iteration 5: the last 3 updates were all skipped"):
        skips.record(5, _outcome(2.0, False))
