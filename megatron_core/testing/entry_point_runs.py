"""Run an entry point (pretrain_gpt.py, ...) as a user does, and read its Megatron log lines.

    done = run_entry_point("pretrain_gpt.py", flags)               # plain python, one process
    done = run_entry_point("pretrain_gpt.py", flags, nproc=2)      # torchrun, 2 processes
    lines = logged_iterations(done.stdout)    # {iteration: the line without its clock fields}

The clock fields (timestamp, elapsed ms, throughput, tokens/s) are dropped, so two runs of
the same computation log identical strings: loss, lr, loss scale, grad norm, consumed samples.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

from .distributed import find_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_ITERATION = re.compile(r"iteration\s+(\d+)/\s*\d+ \|")
_CLOCK_FIELDS = [re.compile(p) for p in (r"^ ?\[[^\]]*\] ", r" elapsed time per iteration \(ms\): [^|]*\|",
                                         r" throughput per GPU[^|]*\|", r" tokens per second: [^|]*\|",
                                         r" MFU: [^|]*\|")]


def clean_env(**extra: str) -> dict:
    """The caller's environment for a fresh launch: this checkout first, one thread, no launcher variables."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **extra)
    for name in _LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def entry_point_command(script: str, flags: List[str], nproc: Optional[int] = None) -> List[str]:
    path = os.path.join(ROOT, script)
    if nproc is None:
        return [sys.executable, path, *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
            "127.0.0.1", "--master-port", str(find_free_port()), path, *flags]


def run_entry_point(script: str, flags: List[str], nproc: Optional[int] = None, env: Optional[dict] = None,
                    timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(entry_point_command(script, flags, nproc), capture_output=True, text=True,
                          env=env or clean_env(), timeout=timeout, cwd=ROOT, **popen)


def without_clock(line: str) -> str:
    for pattern in _CLOCK_FIELDS:
        line = pattern.sub("", line)
    return line.strip()


def logged_iterations(stdout: str) -> Dict[int, str]:
    """{iteration: its training log line without the clock fields}."""
    return {int(m.group(1)): without_clock(line) for line in stdout.splitlines()
            for m in [_ITERATION.search(line)] if m and "lm loss" in line}


def logged_validations(stdout: str) -> List[str]:
    return [line.strip() for line in stdout.splitlines() if "validation loss at iteration" in line]
