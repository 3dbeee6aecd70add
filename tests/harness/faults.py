"""Faults a test injects into an entry point's run from outside the package.

    python -m tests.harness.faults [--stop-rank R:N[:STOP]] [--pause-before-rename SECONDS]
                                   [--kill-preprocess MOMENT] SCRIPT FLAGS...

The faults are installed in this process, then SCRIPT runs as __main__ with FLAGS (as
`python SCRIPT FLAGS` would run it); under torchrun, `-m tests.harness.faults ...` in
place of the script. entry_points.run_* take `faults=[...]` and build these commands;
forked ranks install the faults once, before forking.

--stop-rank R:N[:STOP]      rank R SIGKILLs (SIGSTOP: freezes) itself as it starts iteration N
                            (right after logging iteration N-1; N >= 2), in the first attempt only
                            (a group torchrun --max-restarts restarts runs clean)
--pause-before-rename S     each checkpoint file (*.pt) waits S seconds between its complete
                            temporary and the rename, so a test can kill the run at that point
--kill-preprocess MOMENT    tools/preprocess_data.py SIGKILLs itself at MOMENT: `writing` (the
                            first batch of tokens of its first partition is written), `recording:K`
                            (partition K's datasets are published, its record is not), `merging`
                            (the merge has copied two partitions of the first key)
Nothing in megatron_core reads a test switch: the faults patch its functions here.
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import time
from typing import List, Sequence


def stop_rank_at(rank: int, iteration: int, how: str = "KILL") -> None:
    """Rank `rank` kills (or stops) itself once it has logged iteration `iteration` - 1."""
    if iteration < 2:
        raise ValueError("--stop-rank stops a rank after an iteration it logged: N must be 2 or more")
    import torch.distributed as dist
    from megatron_core.training.train_log import TrainingLogger
    after_step = TrainingLogger.after_step

    def after_step_then_stop(self, done_iteration, *args, **kwargs):
        after_step(self, done_iteration, *args, **kwargs)
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"     # a restart runs clean
        if done_iteration + 1 == iteration and dist.get_rank() == rank and first_attempt:
            os.kill(os.getpid(), signal.SIGSTOP if how == "STOP" else signal.SIGKILL)
    TrainingLogger.after_step = after_step_then_stop


def pause_before_rename(seconds: float) -> None:
    """Each checkpoint file waits between its complete temporary and its final name."""
    from megatron_core import atomic_files
    publish = atomic_files.publish

    def paused_publish(tmp: str, path: str) -> None:
        if path.endswith(".pt"):
            time.sleep(seconds)
        publish(tmp, path)
    atomic_files.publish = paused_publish


def kill_preprocess_at(moment: str) -> None:
    """The preprocessing process SIGKILLs itself at `moment` (see the module's docstring)."""
    from megatron_core.data.indexed_dataset import IndexedDatasetBuilder
    from megatron_core.data.preprocess_progress import Progress

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "writing":
        add_documents = IndexedDatasetBuilder.add_documents

        def add_documents_then_die(self, *args, **kwargs):
            add_documents(self, *args, **kwargs)
            die()
        IndexedDatasetBuilder.add_documents = add_documents_then_die
    elif moment.startswith("recording:"):
        index, record = int(moment.split(":")[1]), Progress.record

        def die_before_recording(self, partition, *args, **kwargs):
            if partition == index:
                die()
            record(self, partition, *args, **kwargs)
        Progress.record = die_before_recording
    elif moment == "merging":
        add_index, merged = IndexedDatasetBuilder.add_index, []

        def add_index_then_die(self, prefix):
            add_index(self, prefix)
            merged.append(prefix)
            if len(merged) == 2:
                die()
        IndexedDatasetBuilder.add_index = add_index_then_die
    else:
        raise ValueError(f"--kill-preprocess {moment}: expected writing, recording:K or merging")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.harness.faults")
    p.add_argument("--stop-rank", metavar="R:N[:STOP]")
    p.add_argument("--pause-before-rename", type=float, metavar="SECONDS")
    p.add_argument("--kill-preprocess", metavar="MOMENT")
    return p


def install(faults: Sequence[str]) -> None:
    """Install the faults that `faults` (this module's options) name, in this process."""
    options = parser().parse_args(list(faults))
    if options.stop_rank:
        rank, iteration, *how = options.stop_rank.split(":")
        stop_rank_at(int(rank), int(iteration), *how)
    if options.pause_before_rename is not None:
        pause_before_rename(options.pause_before_rename)
    if options.kill_preprocess:
        kill_preprocess_at(options.kill_preprocess)


def split_command(argv: Sequence[str]) -> tuple:
    """(fault options, [SCRIPT, FLAGS...]): the options end at the first argument not taken by one."""
    argv, faults = list(argv), []
    while argv and argv[0].startswith("--"):
        faults += argv[:2]
        argv = argv[2:]
    return faults, argv


def main(argv: List[str]) -> None:
    faults, command = split_command(argv)
    install(faults)
    script = command[0]
    sys.argv = command
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))   # as `python SCRIPT` puts its folder first
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
