"""pretrain_gpt.py --deepspeed under torchrun logs the losses of a plain PyTorch loop.

The reference is megatron_core.testing.plain_gpt_loop: the serial GPT trained by
torch.optim.AdamW on the same samples, independent of both backends. Each layout runs
DeepSpeed's engine end to end (deepspeed.initialize with our mpu, ZeRO's reductions, its
clipping and step) for 5 steps and must log those losses within fp32 rounding (relative
1e-5), or within bf16 rounding for --bf16.

DeepSpeed compiles its CPU comm op at every engine start; the op cache is
megatron_core.testing.deepspeed_op_cache (TORCH_EXTENSIONS_DIR, stale locks removed).
Skipped when deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]').
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")

from megatron_core.testing.deepspeed_op_cache import deepspeed_test_env  # noqa: E402
from megatron_core.testing.entry_points import clean_env, failure_report, logged_losses, run_entry_point  # noqa: E402
from megatron_core.testing.tiny_corpus import BERT_VOCAB, ROOT, preprocess_zh_news  # noqa: E402

STEPS = 5
# bf16 weights and activations (fp32 master weights and optimizer state): its 8-bit mantissa
# rounds each element by up to 2**-9 relative, and the mean loss of 8 x 32 tokens by far less:
# measured 6.5e-5 relative after 5 steps (native and DeepSpeed alike). 1e-3 leaves room for
# other machines' kernels and still fails a wrong step, which moves the loss by ~1e-2.
BF16_RELATIVE = 1e-3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return preprocess_zh_news(str(tmp_path_factory.mktemp("ds_corpus")))


def gpt_flags(prefix, cache_dir):
    """A tiny GPT, fp32, no dropout, constant lr, global batch 8 of micro-batches of 2."""
    return ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(STEPS),
            "--lr", "3e-3", "--lr-decay-style", "constant", "--weight-decay", "0.1", "--clip-grad", "1.0",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
            "--eval-interval", str(STEPS), "--eval-iters", "1", "--split", "90,10,0",
            "--data-path", prefix, "--data-cache-path", cache_dir, "--tokenizer-type", "BertWordPieceLowerCase",
            "--num-workers", "0", "--vocab-file", BERT_VOCAB]


@pytest.fixture(scope="module")
def flags(corpus, tmp_path_factory):
    return gpt_flags(corpus, str(tmp_path_factory.mktemp("ds_cache")))


@pytest.fixture(scope="module")
def plain_losses(flags):
    done = subprocess.run([sys.executable, "-m", "megatron_core.testing.plain_gpt_loop", *flags],
                          capture_output=True, text=True, env=clean_env(), timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]
    assert len(losses) == STEPS
    return losses


def write_config(directory, config):
    path = os.path.join(str(directory), "ds.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def run_deepspeed(flags, config_path, nproc, extra=()):
    return run_entry_point("pretrain_gpt.py", [*flags, *extra, "--deepspeed", "--deepspeed_config", config_path],
                           nproc=nproc, timeout=600, env=deepspeed_test_env())


def assert_losses(done, expected, rel):
    assert done.returncode == 0, failure_report(done)
    losses = {step: values["lm loss"] for step, values in logged_losses(done.stdout).items()}
    assert sorted(losses) == list(range(1, STEPS + 1)), failure_report(done)
    assert losses[STEPS] < losses[1]      # it learns
    for step, want in enumerate(expected, 1):
        assert losses[step] == pytest.approx(want, rel=rel), (step, losses, expected)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_at_dp2_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path, stage):
    config = write_config(tmp_path, {"zero_optimization": {"stage": stage}})
    assert_losses(run_deepspeed(flags, config, nproc=2), plain_losses, rel=1e-5)


def test_zero1_at_tp2_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path):
    config = write_config(tmp_path, {"zero_optimization": {"stage": 1}})
    done = run_deepspeed(flags, config, nproc=2, extra=["--tensor-model-parallel-size", "2"])
    assert_losses(done, plain_losses, rel=1e-5)


def test_zero1_at_pp2_through_our_pipeline_schedule_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path):
    # The tied word table lives on both stages: summed before DeepSpeed's step, counted once in its norm.
    config = write_config(tmp_path, {"zero_optimization": {"stage": 1}})
    done = run_deepspeed(flags, config, nproc=2, extra=["--pipeline-model-parallel-size", "2"])
    assert_losses(done, plain_losses, rel=1e-5)


def test_zero3_with_cpu_optimizer_offload_at_dp2_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path):
    # DeepSpeedCPUAdam steps the fp32 partitions on the CPU (first run compiles cpu_adam, ~2 min).
    config = write_config(tmp_path, {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}})
    assert_losses(run_deepspeed(flags, config, nproc=2), plain_losses, rel=1e-5)


def test_bf16_zero2_at_dp2_stays_within_bf16_rounding_of_the_fp32_losses(flags, plain_losses, tmp_path):
    config = write_config(tmp_path, {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}})
    assert_losses(run_deepspeed(flags, config, nproc=2, extra=["--bf16"]), plain_losses, rel=BF16_RELATIVE)


def test_train_batch_size_contradicting_global_batch_size_is_one_sentence_and_exit_2(flags, tmp_path):
    config = write_config(tmp_path, {"train_batch_size": 16, "zero_optimization": {"stage": 1}})
    done = run_entry_point("pretrain_gpt.py", [*flags, "--deepspeed", "--deepspeed_config", config], timeout=120)
    assert done.returncode == 2, failure_report(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "train_batch_size 16" in lines[0] and "--global-batch-size gives 8" in lines[0]
