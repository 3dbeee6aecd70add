"""A tools/*.py script's main() in this process, or in a child forked from it.

    run_tool_main("convert_checkpoint.py", "--to-hf", "--load", ckpt, "--output", out)
    done = run_tool_forked("preprocess_data.py", "--input", src, ..., faults=["--kill-preprocess", "merging"])

For tests that call a tool many times (each CLI start would pay its imports again);
every tool's own CLI is also run at least once as a user runs it. run_tool_forked runs the
script as `python tools/SCRIPT FLAGS` would (as __main__, through cli.run, its exit status and
its stdout/stderr captured) in a forked child, so signals, a SIGKILL and the faults of
faults.py (installed in the child only) never touch the test's process.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from .faults import install
from .forked_ranks import run_rank
from .tiny_corpus import ROOT


def load_tool(script: str):
    """The tools/ script as a module (its main() not called)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(script)[0], os.path.join(ROOT, "tools", script))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def run_tool_main(script: str, *flags) -> None:
    load_tool(script).main([str(f) for f in flags])


def run_tool_forked(script: str, *flags, faults: Sequence[str] = (),
                    timeout: float = 120) -> subprocess.CompletedProcess:
    """`python tools/SCRIPT FLAGS`, forked from this process (the script's imports are paid here
    once); returncode -9 when the child was SIGKILLed (a fault). Killed at `timeout`."""
    path = os.path.join(ROOT, "tools", script)
    flags = [str(f) for f in flags]
    runpy.run_path(path, run_name="__mcore_preload__")      # the imports, not the run
    with tempfile.TemporaryDirectory() as logs:
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if faults:
                    install(faults)
                status = run_rank(0, 1, logs, path, flags, launcher=False)
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(status)
        deadline = time.monotonic() + timeout
        while True:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"{script} {' '.join(flags)} ran longer than {timeout} s")
            time.sleep(0.02)
        outputs = []
        for name in ("0.out", "0.err"):
            with open(os.path.join(logs, name), encoding="utf-8", errors="replace") as f:
                outputs.append(f.read())
    return subprocess.CompletedProcess([script, *flags], os.waitstatus_to_exitcode(wait_status), *outputs)
