"""Run a launch script of scripts/ in its dry-run mode, and read the estimate it prints.

    done = dry_run_script("pretrain_llama_7b.sh")                 # DRY_RUN=1 bash scripts/...
    estimate_fields(done.stdout)["model parameters"]             # 6738415616

The child gets this checkout on PYTHONPATH, this Python and none of the launcher variables.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, Optional, Sequence

from .entry_points import clean_env
from .tiny_corpus import ROOT

_COUNT = re.compile(r"^(model parameters|parameters per rank)[^:]*: ([\d,]+)", re.MULTILINE)
_LAYOUT = re.compile(r"^layout: world size (\d+) = TP (\d+) x PP (\d+) x DP (\d+)", re.MULTILINE)


def dry_run_script(script: str, args: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
                   timeout: float = 120) -> subprocess.CompletedProcess:
    """`DRY_RUN=1 bash scripts/<script> args` from the repository root."""
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], capture_output=True, text=True,
                          env={**clean_env(DRY_RUN="1", PYTHON=sys.executable), **(env or {})}, cwd=ROOT,
                          timeout=timeout)


def estimate_fields(stdout: str) -> Dict[str, int]:
    """The counts and the layout of the estimate block: "model parameters", "parameters per rank",
    "world", "tp", "pp", "dp"."""
    fields = {name: int(value.replace(",", "")) for name, value in _COUNT.findall(stdout)}
    layout = _LAYOUT.search(stdout)
    if layout:
        fields.update(zip(("world", "tp", "pp", "dp"), map(int, layout.groups())))
    return fields
