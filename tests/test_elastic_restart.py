"""torchrun --max-restarts: a killed rank makes torchrun restart the group, which re-forms (a
store prefixed by the attempt) and resumes from the newest checkpoint in --save.

A tiny GPT at TP=2, 40 iterations, a checkpoint every 5. In the first attempt rank 1 SIGKILLs
itself as it starts iteration 18 (tests/harness/faults.py --stop-rank, first attempt only);
torchrun restarts both ranks, which load iteration 15 from --save and go on to 40. The logged
losses of iterations 1-40, the repeated 16-17 included, equal an uninterrupted run's (the same
computation on the same data, resumed bit-exactly). With torchrun's default static rendezvous,
and with --rdzv-backend c10d on the first 10 iterations (killed at 8, resumed from 5).
"""
import os
import re
import sys

import pytest

from tests.harness.entry_points import (ROOT, clean_env, failure_report, find_free_port, run_ranks,
                                        tiny_gpt_flags)
from tests.harness.tiny_corpus import preprocess_zh_news

ITERS, KILLED_AT, EVERY = 40, 18, 5
LOSS = re.compile(r"iteration +(\d+)/ +\d+ \|.*?\| lm loss: ([0-9.E+-]+) \|")


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("elastic"))
    preprocess_zh_news(directory)
    flags = tiny_gpt_flags(directory)
    flags[flags.index("--train-iters") + 1] = str(ITERS)
    flags[flags.index("--eval-interval") + 1] = str(10 * ITERS)
    flags[flags.index("--global-batch-size") + 1] = "2"        # one micro-batch an iteration: the test is the restart
    return flags + ["--tensor-model-parallel-size", "2", "--save-interval", str(EVERY)]


@pytest.fixture(scope="module")
def uninterrupted(flags, tmp_path_factory):
    done = run_ranks("pretrain_gpt.py", flags + ["--save", str(tmp_path_factory.mktemp("plain") / "save")], 2)
    assert done.returncode == 0, failure_report(done)
    return [(int(i), float(loss)) for i, loss in LOSS.findall(done.stdout)]


# The c10d rendezvous runs the same restart on the first 10 iterations (killed at 8, resumed from 5):
# what differs is how the group re-forms, not how far it goes.
@pytest.mark.parametrize("rendezvous,iters,killed_at", [([], ITERS, KILLED_AT),
                                                        (["--rdzv-backend", "c10d", "--rdzv-endpoint"], 10, 8)],
                         ids=["static", "c10d"])
def test_a_killed_rank_restarts_the_group_which_resumes_with_the_uninterrupted_losses(flags, uninterrupted,
                                                                                      rendezvous, iters, killed_at,
                                                                                      tmp_path):
    import subprocess

    flags = list(flags)
    flags[flags.index("--train-iters") + 1] = str(iters)
    port = str(find_free_port())
    launcher = ["--nproc-per-node", "2", "--max-restarts", "1"]
    launcher += [*rendezvous, f"127.0.0.1:{port}"] if rendezvous else ["--master-addr", "127.0.0.1",
                                                                       "--master-port", port]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "tests.harness.faults",
               "--stop-rank", f"1:{killed_at}", os.path.join(ROOT, "pretrain_gpt.py"), *flags,
               "--save", str(tmp_path / "save")]
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=300, cwd=ROOT)
    assert done.returncode == 0, failure_report(done)
    out = done.stdout + done.stderr
    assert f"restart 1: resuming from the newest checkpoint in --save {tmp_path / 'save'}" in out
    resumed = (killed_at - 1) // EVERY * EVERY         # the newest checkpoint before the kill
    assert "successfully loaded checkpoint" in out and f"at iteration {resumed}" in out
    logged = [(int(i), float(loss)) for i, loss in LOSS.findall(done.stdout)]
    repeated = [(i, loss) for i, loss in uninterrupted if i <= killed_at - 1] + \
        [(i, loss) for i, loss in uninterrupted if resumed < i <= iters]
    assert [i for i, _ in logged] == [i for i, _ in repeated]        # 1..17, then 16..40
    assert logged == repeated
