"""pretrain_gpt.py run as a user runs it (plain python and torchrun) against a plain PyTorch loop.

Every layout logs, step for step, the losses of megatron_core.testing.plain_gpt_loop: the
serial GPT trained by torch.optim.AdamW on the same samples (fp32, relative 1e-5).
"""
import os
import subprocess
import sys

import pytest

from megatron_core.testing import find_free_port
from megatron_core.testing.entry_point_runs import entry_point_environment as _env
from megatron_core.testing.entry_point_runs import logged_losses, run_entry_point
from megatron_core.training.train_step import SkipCounter, StepOutcome, TrainingStopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
STEPS = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"),
                    "--input", os.path.join(DATA, "zh_news_200.jsonl"), "--output-prefix", str(out / "zh"),
                    "--tokenizer-type", "BertWordPieceLowerCase", "--log-interval", "0",
                    "--vocab-file", os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt"), "--append-eod"],
                   check=True, capture_output=True, env=_env())
    return str(out)


def model_flags(corpus):
    """A tiny GPT, fp32, no dropout, constant lr: what the plain loop models exactly."""
    return ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(STEPS),
            "--lr", "3e-3", "--lr-decay-style", "constant", "--weight-decay", "0.1", "--clip-grad", "1.0",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
            "--eval-interval", "5", "--eval-iters", "1", "--split", "90,10,0",
            "--data-path", os.path.join(corpus, "zh_text_document"), "--data-cache-path", os.path.join(corpus, "cache"),
            "--tokenizer-type", "BertWordPieceLowerCase", "--num-workers", "0",
            "--vocab-file", os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt")]


@pytest.fixture(scope="module")
def plain_losses(corpus):
    import json
    done = subprocess.run([sys.executable, "-m", "megatron_core.testing.plain_gpt_loop", *model_flags(corpus)],
                          capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]
    assert len(losses) == STEPS
    return losses


def run_pretrain(flags, nproc=None, timeout=300):
    return run_entry_point("pretrain_gpt.py", flags, nproc, timeout)


def assert_serial_losses(done, plain_losses):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    losses = logged_losses(done.stdout)
    assert sorted(losses) == list(range(1, STEPS + 1)), done.stdout[-2000:]
    assert losses[STEPS] < losses[1]   # it learns
    for step, expected in enumerate(plain_losses, 1):
        assert losses[step] == pytest.approx(expected, rel=1e-5), (step, losses, plain_losses)


def test_single_process_without_launcher_logs_the_plain_pytorch_losses(corpus, plain_losses):
    done = run_pretrain(model_flags(corpus))
    assert_serial_losses(done, plain_losses)
    assert "validation loss at iteration 5 | lm loss value:" in done.stdout
    assert "MFU: n/a (CPU)" in done.stdout and "summary:" in done.stdout


@pytest.mark.parametrize("tp,pp,dp", [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1)])
def test_torchrun_layout_logs_the_serial_losses(corpus, plain_losses, tp, pp, dp):
    flags = model_flags(corpus) + ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    assert_serial_losses(run_pretrain(flags, nproc=tp * pp * dp), plain_losses)


@pytest.mark.parametrize("tp,pp,extra", [
    (1, 2, ["--num-layers-per-virtual-pipeline-stage", "1"]),
    (2, 1, ["--sequence-parallel", "--recompute-granularity", "full", "--recompute-method", "uniform",
            "--recompute-num-layers", "1"]),
], ids=["virtual-pipeline", "sequence-parallel-recompute"])
def test_torchrun_interleaving_sequence_parallel_and_recompute_log_the_serial_losses(corpus, plain_losses, tp, pp,
                                                                                      extra):
    flags = model_flags(corpus) + ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
                                   *extra]
    assert_serial_losses(run_pretrain(flags, nproc=tp * pp), plain_losses)


def test_impossible_flags_are_one_sentence_and_exit_2_before_any_process_group(corpus):
    # WORLD_SIZE=2 with no second process: any rendezvous would hang until the timeout.
    flags = model_flags(corpus) + ["--pipeline-model-parallel-size", "2", "--num-layers", "3"]
    env = dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(find_free_port()))
    done = run_entry_point("pretrain_gpt.py", flags, timeout=60, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "--num-layers 3" in lines[0] and "--pipeline-model-parallel-size 2" in lines[0]


def test_global_batch_not_divisible_by_micro_batch_times_dp_names_the_flags(corpus):
    flags = model_flags(corpus) + ["--global-batch-size", "6", "--micro-batch-size", "4"]
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
