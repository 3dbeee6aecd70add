"""How far a tool's work raises its process's peak RSS above what its imports left resident.

    growth = tool_peak_rss_growth("tools/convert_checkpoint.py", ["--from-hf", hf, "--output", out],
                                  warmup=["--from-hf", tiny_hf, "--output", tiny_out])

The tool runs in a child process: it loads the script, runs main(warmup) first when given (a
tiny run of the same kind, so the imports and lazy set-up a main() does inside are paid
before the measurement), then resets the peak-RSS mark (Linux: /proc/self/clear_refs 5) and
runs main(args). Importing torch peaks higher than it stays, which would hide the work.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional, Sequence

from .entry_points import ROOT, clean_env

PEAK_RSS_RESETTABLE = os.path.exists("/proc/self/clear_refs")

_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
warmup, args = json.loads(sys.argv[2]), json.loads(sys.argv[3])
if warmup is not None:
    tool.main(warmup)
def status(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
tool.main(args)
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def tool_peak_rss_growth(tool: str, args: Sequence[str], warmup: Optional[Sequence[str]] = None,
                         timeout: float = 300) -> int:
    """Bytes by which `tool`'s main(args) raised the peak RSS above the RSS it started from."""
    done = subprocess.run([sys.executable, "-c", _CHILD, os.path.join(ROOT, tool),
                           json.dumps(None if warmup is None else list(map(str, warmup))),
                           json.dumps(list(map(str, args)))],
                          capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{tool} failed:\n{done.stderr[-3000:]}")
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    return rss["peak"] - rss["before"]
