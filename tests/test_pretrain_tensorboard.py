"""pretrain_gpt.py --tensorboard-dir writes Megatron's scalar names with the values its log lines print.

An fp16 run with a growing dynamic loss scale, so that "loss-scale" moves; the event file is
read back with tensorboard's own EventAccumulator (tensorboard is in the `test` extra). The run
forks from the session's fork server (entry_points.run_forked).
"""
import math

import pytest

from tests.harness.entry_points import (TINY_GPT_STEPS, failure_report, logged_values, run_forked,
                                                tiny_gpt_flags)

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install -e '.[test]')").EventAccumulator

ITERATIONS = list(range(1, TINY_GPT_STEPS + 1))


def scalars(directory):
    events = EventAccumulator(directory, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_megatrons_scalar_names_with_the_logged_values(gpt_corpus, tmp_path):
    flags = tiny_gpt_flags(gpt_corpus) + ["--fp16", "--initial-loss-scale", "1", "--loss-scale-window", "1",
                                          "--tensorboard-dir", str(tmp_path / "tb")]
    done = run_forked("pretrain_gpt.py", flags)
    assert done.returncode == 0, failure_report(done)
    written = scalars(str(tmp_path / "tb"))
    assert {"learning-rate", "batch-size", "lm loss", "loss-scale", "grad-norm", "iteration-time",
            "lm loss validation", "lm loss validation ppl"} <= set(written), sorted(written)

    for tag, column, rel in (("lm loss", "lm loss", 1e-6), ("loss-scale", "loss scale", 0),
                             ("learning-rate", "learning rate", 1e-6), ("batch-size", "global batch size", 0)):
        logged = logged_values(done.stdout, column)
        assert sorted(written[tag]) == sorted(logged) == ITERATIONS, (tag, written[tag], logged)
        for k in ITERATIONS:
            assert written[tag][k] == pytest.approx(logged[k], rel=rel), (tag, k, written[tag], logged)
    assert written["loss-scale"] == {k: 2.0 ** k for k in ITERATIONS}     # it moved, as logged
    logged_norms = logged_values(done.stdout, "grad norm")
    assert all(written["grad-norm"][k] == pytest.approx(logged_norms[k], abs=1e-3) for k in ITERATIONS)
    assert all(t > 0 for t in written["iteration-time"].values())

    validation = float(done.stdout.split("lm loss value:")[1].split("|")[0])
    assert written["lm loss validation"] == {TINY_GPT_STEPS: pytest.approx(validation, rel=1e-6)}
    assert written["lm loss validation ppl"][TINY_GPT_STEPS] == pytest.approx(math.exp(validation), rel=2e-5)
