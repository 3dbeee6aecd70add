"""A rank that dies or hangs mid-run, and a loss that turns nan: the run says so in one sentence.

Ranks without a launcher agent (as mpirun starts them; rank 0 hosts the rendezvous store;
forked from one process that imported pretrain_gpt.py: entry_points.run_forked_ranks): the
rank that the harness's --stop-rank fault (tests/harness/faults.py) kills (SIGKILL) or freezes (SIGSTOP) at the start of
iteration 3 is named by every other rank, which exits with status 2 and that one sentence,
within the collective timeout (--distributed-timeout-minutes 0.1: 6 s) instead of hanging.
Under torchrun the agent stops the other workers itself as soon as one dies, and its report
names the dead rank as the root cause.
"""
import re
import socket

import pytest

from tests.harness.entry_points import run_entry_point, run_forked_ranks, tiny_gpt_flags


def long_run(gpt_corpus, *extra):
    return tiny_gpt_flags(gpt_corpus) + ["--train-iters", "30", "--eval-interval", "100",
                                         "--distributed-timeout-minutes", "0.1", *extra]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("world,layout,victim,how", [
    (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 1, "KILL"),
    (2, [], 0, "KILL"),                                         # rank 0 hosts the store
    (2, ["--tensor-model-parallel-size", "2"], 1, "STOP"),      # hung: found at the collective timeout
], ids=["tp2-pp2-rank1-killed", "dp2-rank0-killed", "tp2-rank1-hung"])
def test_every_other_rank_exits_naming_the_rank_that_stopped(gpt_corpus, world, layout, victim, how):
    # A killed victim exits first and the others get 90 s to notice; a frozen one never exits, so
    # it is killed (SIGKILL, as the harness does) a second after its only peer has exited.
    grace = 90 if how == "KILL" else 1
    ranks = run_forked_ranks("pretrain_gpt.py", long_run(gpt_corpus, *layout), world, timeout=240, grace=grace,
                             faults=["--stop-rank", f"{victim}:3:{how}"])
    # the host by its name and the address its peers reach it at (forked ranks: this machine, 127.0.0.1)
    expected = (f"error: rank {victim} on host {socket.gethostname()} (127.0.0.1) stopped responding during "
                f"iteration 3 (its process died or hung); the other ranks exit; see its log.")
    assert ranks[victim].returncode == -9
    for rank, done in enumerate(ranks):
        if rank != victim:
            assert done.returncode == 2, (rank, done.returncode, done.stderr[-3000:])
            assert error_lines(done.stderr) == [expected] and "Traceback" not in done.stderr, done.stderr[-3000:]
    logged = ranks[world - 1].stdout     # the last rank logs
    assert "iteration        2/" in logged and "iteration        3/" not in logged


def test_under_torchrun_the_agent_stops_the_others_and_names_the_dead_rank(gpt_corpus):
    done = run_entry_point("pretrain_gpt.py", long_run(gpt_corpus, "--tensor-model-parallel-size", "2"), nproc=2,
                           timeout=240, faults=["--stop-rank", "1:3"])
    assert done.returncode != 0
    root_cause = done.stderr.split("Root Cause (first observed failure):")[1]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: -9", root_cause), done.stderr[-3000:]
    # Rank 0 is stopped by the agent (SIGTERM) or, if it noticed first, names rank 1 itself.
    for line in error_lines(done.stderr):
        assert line.startswith(f"error: rank 1 on host {socket.gethostname()} (127.0.0.1) stopped responding "
                               f"during iteration 3"), line


def test_a_nan_loss_is_named_with_its_iteration_skipped_and_stops_at_max_skipped_iterations(gpt_corpus):
    """A learning rate of 1e30 blows the weights up within a few updates: from then on the loss
    is nan and the update is skipped with a warning naming the iteration, and
    --max-skipped-iterations 2 stops the run at the next one with one sentence naming it."""
    flags = tiny_gpt_flags(gpt_corpus) + ["--lr", "1e30", "--clip-grad", "0", "--train-iters", "20",
                                          "--max-skipped-iterations", "2"]
    done = run_entry_point("pretrain_gpt.py", flags)
    assert done.returncode == 2, done.stderr[-3000:]
    warnings = re.findall(r"^warning: iteration (\d+): lm loss is (nan|inf); the update was skipped$", done.stdout,
                          re.MULTILINE)
    first = int(warnings[0][0])       # the next one stops the run before its log line
    assert [int(i) for i, _ in warnings] == [first], done.stdout[-3000:]
    assert error_lines(done.stderr) == [
        f"error: stopped at iteration {first + 1}: the last 2 updates were all skipped for inf/nan gradients; lower "
        f"--lr, raise --min-loss-scale or use --bf16, or raise --max-skipped-iterations."], done.stderr[-3000:]
