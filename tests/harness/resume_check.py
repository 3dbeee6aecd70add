"""Exact resume, checked as a user would see it: an uninterrupted run against the same run resumed.

    runs = check_exact_resume(run, flags, tmp, iters=6, break_at=3)
    runs.full, runs.resumed        # CompletedProcess of the two runs
    runs.break_dir                 # the checkpoint of iteration `break_at` the resumed run loaded
    runs = check_resume_of(full, full_dir, break_dir, run, flags, tmp, iters=5, break_at=2)   # full already ran

`run(flags)` runs the entry point (any launcher) and returns its CompletedProcess. The
uninterrupted run saves every `break_at` iterations; its checkpoint of iteration `break_at`
is moved to a directory of its own with its tracker file(s) naming it, as a user resumes an
older checkpoint. The resumed run (--load that directory) must log the same lines for the
iterations after `break_at` and the same validations, and end with the same tensors in every
file of the final checkpoint (both runs save at `iters`). Two runs, not three: a run
stopped by --exit-interval saves the same state as one that goes on, which
tests/test_checkpoint_resume.py checks once on its own.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence

import torch

from .entry_points import failure_report, logged_iterations, logged_validations

# Megatron's iter_0000003 and DeepSpeed's global_step3 directories, and their trackers.
_ITERATION_DIRECTORY = re.compile(r"^(iter_(\d{7})|global_step(\d+))$")
TRACKER_FILES = ("latest_checkpointed_iteration.txt", "latest")
# Keys naming other directories (args, ds_config) or compared through the logged losses (RNG).
UNCOMPARED_KEYS = ("args", "rng_state", "ds_config")
COUNTERS = ("iteration", "consumed_train_samples", "consumed_valid_samples", "global_steps")


@dataclass
class ResumeRuns:
    full: subprocess.CompletedProcess
    resumed: subprocess.CompletedProcess
    full_dir: str
    break_dir: str
    resumed_dir: str


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, failure_report(done)
    return done


def iteration_directories(checkpoint_dir: str) -> Dict[int, str]:
    """{iteration: directory name} of the saved iterations in `checkpoint_dir`."""
    found = {}
    for name in os.listdir(checkpoint_dir):
        match = _ITERATION_DIRECTORY.match(name)
        if match:
            found[int(match.group(2) or match.group(3))] = name
    return found


def split_off_iteration(checkpoint_dir: str, iteration: int, destination: str) -> None:
    """Move `iteration`'s directory from `checkpoint_dir` into `destination` and write the tracker
    file(s) `checkpoint_dir` has, naming that iteration the way they name the newest one."""
    saved = iteration_directories(checkpoint_dir)
    newest = max(saved)
    os.makedirs(destination)
    shutil.move(os.path.join(checkpoint_dir, saved[iteration]), os.path.join(destination, saved[iteration]))
    for tracker in TRACKER_FILES:
        path = os.path.join(checkpoint_dir, tracker)
        if os.path.isfile(path):
            with open(path) as f:
                names_newest = f.read().strip()
            assert names_newest in (str(newest), saved[newest]), (path, names_newest)
            with open(os.path.join(destination, tracker), "w") as f:
                f.write(str(iteration) if names_newest == str(newest) else saved[iteration])


def checkpoint_files(directory: str) -> List[str]:
    return sorted(os.path.relpath(p, directory) for p in glob.glob(os.path.join(directory, "**", "*.pt"),
                                                                  recursive=True))


def assert_same_tensors(a, b, where: str = "") -> None:
    """Equal nested structure with bit-identical tensors of the same dtype."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}/{i}")


def assert_same_checkpoint_files(full_dir: str, resumed_dir: str, load: Callable[[str], dict],
                                 compared_keys: Iterable[str] = COUNTERS) -> None:
    """Every file of the two checkpoints: the same names, tensors and counters."""
    full_files, resumed_files = checkpoint_files(full_dir), checkpoint_files(resumed_dir)
    assert full_files and full_files == resumed_files, (full_files, resumed_files)
    for name in full_files:
        full, resumed = load(os.path.join(full_dir, name)), load(os.path.join(resumed_dir, name))
        for key in UNCOMPARED_KEYS:
            full.pop(key, None), resumed.pop(key, None)
        assert_same_tensors(full, resumed, name)
        for key in compared_keys:
            assert full.get(key) == resumed.get(key), (name, key)


def _validations_after(stdout: str, iteration: int) -> List[str]:
    return [line for line in logged_validations(stdout)
            if int(line.split("validation loss at iteration")[1].split()[0]) > iteration]


def check_exact_resume(run: Callable[[Sequence[str]], subprocess.CompletedProcess], flags: Sequence[str], tmp: str,
                       iters: int, break_at: int, load: Callable[[str], dict] = None,
                       compared_keys: Iterable[str] = COUNTERS) -> ResumeRuns:
    """The two runs, after checking the resumed one repeats the uninterrupted one exactly."""
    full_dir, break_dir = os.path.join(tmp, "full"), os.path.join(tmp, "break")
    full = ok(run([*flags, "--save", full_dir, "--save-interval", str(break_at)]))
    assert iters % break_at == 0
    split_off_break_and_keep_last(full_dir, break_at, break_dir)
    return check_resume_of(full, full_dir, break_dir, run, flags, tmp, iters, break_at, load, compared_keys)


def split_off_break_and_keep_last(full_dir: str, break_at: int, break_dir: str) -> None:
    """The uninterrupted run's checkpoint of `break_at` moved to `break_dir` (split_off_iteration);
    the saves between it and the last removed, so `full_dir` holds the last one only."""
    split_off_iteration(full_dir, break_at, break_dir)
    saved = iteration_directories(full_dir)
    for earlier in [i for i in saved if i != max(saved)]:
        shutil.rmtree(os.path.join(full_dir, saved[earlier]))


def check_resume_of(full: subprocess.CompletedProcess, full_dir: str, break_dir: str,
                    run: Callable[[Sequence[str]], subprocess.CompletedProcess], flags: Sequence[str], tmp: str,
                    iters: int, break_at: int, load: Callable[[str], dict] = None,
                    compared_keys: Iterable[str] = COUNTERS) -> ResumeRuns:
    """Resume an uninterrupted run that already ran: `full` saved `full_dir` (its last iteration
    only, `iters`) and `break_dir` (iteration `break_at`, split_off_break_and_keep_last). For a run
    that also serves other checks (a session's shared run): only the resumed run is launched."""
    load = load or (lambda path: torch.load(path, map_location="cpu", weights_only=True))
    resumed_dir = os.path.join(tmp, "resumed")
    assert sorted(iteration_directories(full_dir)) == [iters]
    resumed = ok(run([*flags, "--load", break_dir, "--save", resumed_dir, "--save-interval", str(iters)]))
    reference, second = logged_iterations(full.stdout), logged_iterations(resumed.stdout)
    assert sorted(reference) == list(range(1, iters + 1)), failure_report(full)
    assert sorted(second) == list(range(break_at + 1, iters + 1)), failure_report(resumed)
    assert second == {i: line for i, line in reference.items() if i > break_at}
    assert _validations_after(full.stdout, break_at) == logged_validations(resumed.stdout)
    assert "successfully loaded checkpoint from" in resumed.stdout
    assert_same_checkpoint_files(full_dir, resumed_dir, load, compared_keys)
    return ResumeRuns(full, resumed, full_dir, break_dir, resumed_dir)
