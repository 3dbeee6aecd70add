"""pretrain_gpt.py with --bf16 / --fp16 (one process and TP=2) against the fp32 plain PyTorch loop.

bf16/fp16 weights and activations with fp32 master weights track the fp32 losses and gradient
norms of tests.harness.plain_gpt_loop; the stated tolerance is rel 1e-3 on the loss
(measured: at most 5e-5 over these 5 steps) and rel 3e-2 on the gradient norm (measured: 1e-2,
fp16 under the tiny scales 2..32 that this test grows through, where small gradients underflow;
the norm is printed with 3 decimals). A gradient left scaled by the loss scale would show in the norm (x1024 or x2^k), a
skipped or lost update in the loss. The "loss scale" column is Megatron's: the scale after the
step, 1.0 without fp16 scaling. The runs fork from the session's fork server (entry_points.run_forked,
run_ranks): the precision is the subject, not the start.
"""
import pytest

from tests.harness.entry_points import (TINY_GPT_STEPS, failure_report, logged_values, run_forked,
                                                run_ranks, tiny_gpt_flags)

LOSS_REL, GRAD_NORM_REL = 1e-3, 3e-2
ITERATIONS = list(range(1, TINY_GPT_STEPS + 1))

# name: (flags, processes, loss scale logged at iteration k)
PRECISIONS = {
    "bf16": (["--bf16"], None, lambda k: 1.0),
    "bf16-tp2": (["--bf16", "--tensor-model-parallel-size", "2"], 2, lambda k: 1.0),
    # Megatron's dynamic scaler: with a window of 1 every clean step doubles the scale.
    "fp16-dynamic": (["--fp16", "--initial-loss-scale", "1", "--loss-scale-window", "1"], None, lambda k: 2.0 ** k),
    "fp16-static-tp2": (["--fp16", "--loss-scale", "1024", "--tensor-model-parallel-size", "2"], 2,
                        lambda k: 1024.0),
}


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_mixed_precision_tracks_the_fp32_plain_loop_and_logs_megatrons_loss_scale(gpt_corpus, plain_gpt, name):
    flags, nproc, scale_at = PRECISIONS[name]
    run_flags = tiny_gpt_flags(gpt_corpus) + flags
    done = run_forked("pretrain_gpt.py", run_flags) if nproc is None else run_ranks("pretrain_gpt.py", run_flags, nproc)
    assert done.returncode == 0, failure_report(done)
    losses = logged_values(done.stdout, "lm loss")
    grad_norms = logged_values(done.stdout, "grad norm")
    assert sorted(losses) == sorted(grad_norms) == ITERATIONS, failure_report(done)
    assert logged_values(done.stdout, "number of skipped iterations") == {k: 0 for k in ITERATIONS}
    assert logged_values(done.stdout, "loss scale") == {k: scale_at(k) for k in ITERATIONS}
    for k in ITERATIONS:
        assert losses[k] == pytest.approx(plain_gpt["losses"][k - 1], rel=LOSS_REL), (k, losses, plain_gpt)
        assert grad_norms[k] == pytest.approx(plain_gpt["grad_norms"][k - 1], rel=GRAD_NORM_REL), \
            (k, grad_norms, plain_gpt["grad_norms"])
    assert losses[TINY_GPT_STEPS] < losses[1]


def test_fp16_overflow_at_tp2_skips_every_step_and_backs_off_as_megatron(gpt_corpus, plain_gpt):
    """Megatron's default initial scale 2^32 overflows fp16: both TP ranks skip every step (found-inf
    agreed), hysteresis 2 keeps the scale once, then each overflow halves it."""
    done = run_ranks("pretrain_gpt.py", tiny_gpt_flags(gpt_corpus) + ["--fp16", "--tensor-model-parallel-size", "2"],
                     2)
    assert done.returncode == 0, failure_report(done)
    assert logged_values(done.stdout, "loss scale") == {1: 2.0 ** 32, 2: 2.0 ** 31, 3: 2.0 ** 30, 4: 2.0 ** 29,
                                                        5: 2.0 ** 28}
    assert logged_values(done.stdout, "number of skipped iterations") == {k: 1 for k in ITERATIONS}
    assert logged_values(done.stdout, "grad norm") == {}   # no norm for a skipped step
    # The first loss is the untrained model's, as in the fp32 loop.
    assert logged_values(done.stdout, "lm loss")[1] == pytest.approx(plain_gpt["losses"][0], rel=LOSS_REL)
    assert "summary: " in done.stdout and "skipped iterations: 5" in done.stdout
