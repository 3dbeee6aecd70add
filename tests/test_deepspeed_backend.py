"""pretrain_gpt.py --deepspeed logs the losses of a plain PyTorch loop.

The reference is tests.harness.plain_gpt_loop: the serial GPT trained by
torch.optim.AdamW on the same samples, independent of both backends (the session's
`plain_gpt`). Each layout runs DeepSpeed's engine end to end (deepspeed.initialize with our
mpu, ZeRO's reductions, its clipping and step) for 5 steps and must log those losses within
fp32 rounding (relative 1e-5), or within bf16 rounding for --bf16.

A DeepSpeed start costs more than the steps, so runs are shared: ZeRO 0, 1 and 3 at DP=2 and
ZeRO-1 at TP=2 are the session's `engine_runs` (testing/engine_runs.py; ZeRO-1 at DP=2 is
test_launchers' `deepspeed --num_gpus 2` run; test_deepspeed_checkpoint resumes the ZeRO-3 and
TP=2 ones, the checkpoint-tool tests read their checkpoints). ZeRO-2 runs under
torchrun; the other layouts start their ranks directly (testing/engine_runs.run_engine_ranks).

DeepSpeed compiles its CPU comm op at every engine start; the op cache is
tests.harness.deepspeed_op_cache (TORCH_EXTENSIONS_DIR, stale locks removed).
Skipped when deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]').
"""
import pytest

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")

from tests.harness.deepspeed_op_cache import deepspeed_test_env  # noqa: E402
from tests.harness.engine_runs import run_engine_ranks, write_deepspeed_config  # noqa: E402
from tests.harness.entry_points import (TINY_GPT_STEPS, failure_report, logged_losses,  # noqa: E402
                                                run_entry_point, tiny_gpt_flags)

STEPS = TINY_GPT_STEPS
# bf16 weights and activations (fp32 master weights and optimizer state): its 8-bit mantissa
# rounds each element by up to 2**-9 relative, and the mean loss of 8 x 32 tokens by far less:
# measured 6.5e-5 relative after 5 steps (native and DeepSpeed alike). 1e-3 leaves room for
# other machines' kernels and still fails a wrong step, which moves the loss by ~1e-2.
BF16_RELATIVE = 1e-3


@pytest.fixture(scope="module")
def flags(gpt_corpus):
    """A tiny GPT, fp32, no dropout, constant lr, global batch 8 of micro-batches of 2 (what plain_gpt_loop models)."""
    return tiny_gpt_flags(gpt_corpus)


@pytest.fixture(scope="module")
def plain_losses(plain_gpt):
    assert len(plain_gpt["losses"]) == STEPS
    return plain_gpt["losses"]


def write_config(directory, config):
    return write_deepspeed_config(str(directory), config)


def assert_losses(done, expected, rel):
    assert done.returncode == 0, failure_report(done)
    losses = {step: values["lm loss"] for step, values in logged_losses(done.stdout).items()}
    assert sorted(losses) == list(range(1, STEPS + 1)), failure_report(done)
    assert losses[STEPS] < losses[1]      # it learns
    for step, want in enumerate(expected, 1):
        assert losses[step] == pytest.approx(want, rel=rel), (step, losses, expected)


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_zero_stage_at_dp2_logs_the_plain_pytorch_losses(engine_runs, plain_losses, stage):
    assert_losses(engine_runs.get(f"zero{stage}-dp2").done, plain_losses, rel=1e-5)


def test_zero2_at_dp2_under_torchrun_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path):
    config = write_config(tmp_path, {"zero_optimization": {"stage": 2}})
    done = run_entry_point("pretrain_gpt.py", [*flags, "--deepspeed", "--deepspeed_config", config], nproc=2,
                           timeout=600, env=deepspeed_test_env())
    assert_losses(done, plain_losses, rel=1e-5)


def test_zero1_at_tp2_logs_the_plain_pytorch_losses(engine_runs, plain_losses):
    assert_losses(engine_runs.get("zero1-tp2").done, plain_losses, rel=1e-5)


def test_zero1_at_pp2_through_our_pipeline_schedule_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path):
    # The tied word table lives on both stages: summed before DeepSpeed's step, counted once in its norm.
    config = write_config(tmp_path, {"zero_optimization": {"stage": 1}})
    done = run_engine_ranks([*flags, "--pipeline-model-parallel-size", "2"], config)
    assert_losses(done, plain_losses, rel=1e-5)


def test_zero3_with_cpu_optimizer_offload_at_dp2_logs_the_plain_pytorch_losses(flags, plain_losses, tmp_path):
    # DeepSpeedCPUAdam steps the fp32 partitions on the CPU (first run compiles cpu_adam, ~2 min).
    config = write_config(tmp_path, {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}})
    assert_losses(run_engine_ranks(flags, config), plain_losses, rel=1e-5)


def test_bf16_zero2_at_dp2_stays_within_bf16_rounding_of_the_fp32_losses(flags, plain_losses, tmp_path):
    config = write_config(tmp_path, {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}})
    assert_losses(run_engine_ranks([*flags, "--bf16"], config), plain_losses, rel=BF16_RELATIVE)


def test_train_batch_size_contradicting_global_batch_size_is_one_sentence_and_exit_2(flags, tmp_path):
    config = write_config(tmp_path, {"train_batch_size": 16, "zero_optimization": {"stage": 1}})
    done = run_entry_point("pretrain_gpt.py", [*flags, "--deepspeed", "--deepspeed_config", config], timeout=120)
    assert done.returncode == 2, failure_report(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "train_batch_size 16" in lines[0] and "--global-batch-size gives 8" in lines[0]
