"""Where DeepSpeed's JIT-compiled C++ ops live for test runs, and the stale build locks they leave.

DeepSpeed builds `deepspeed_shm_comm` (and `cpu_adam` under optimizer offload) with torch's
cpp_extension at every engine start on CPU: about 45 s the first time, then loaded from
TORCH_EXTENSIONS_DIR. A build killed half-way leaves `<dir>/<op>/lock`, and every later
build waits on it forever. So tests run DeepSpeed with

    env = deepspeed_test_env()      # {"TORCH_EXTENSIONS_DIR": op_cache_dir()}, stale locks removed

op_cache_dir(): $MCORE_DS_OP_CACHE, else $TORCH_EXTENSIONS_DIR, else /tmp/mcore_ds_op_cache,
shared between runs so the build is paid once per machine (CI keeps it inside its run
by setting MCORE_DS_OP_CACHE).

A cold cache costs minutes of compiling (about 300 s of CPU for both ops; CI starts cold every
time), so the test session builds the missing ops in a background process at low priority from
its start (start_background_build, tests/conftest.py) and runs the DeepSpeed tests last: the
build uses the CPU the other tests leave idle, and a DeepSpeed test that comes before it is
done waits on the build's lock as it would on its own build. `python -m tests.harness.deepspeed_op_cache` builds them.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

DEFAULT_OP_CACHE = "/tmp/mcore_ds_op_cache"
# A live build of one op takes about a minute on two cores; a lock older than this is a killed build's.
STALE_LOCK_SECONDS = 600
# The ops DeepSpeed compiles on a CPU host: the comm op at every engine start, Adam for offload.
CPU_OPS = {"ShareMemCommBuilder": "deepspeed_shm_comm", "CPUAdamBuilder": "cpu_adam"}


def op_cache_dir() -> str:
    return os.environ.get("MCORE_DS_OP_CACHE") or os.environ.get("TORCH_EXTENSIONS_DIR") or DEFAULT_OP_CACHE


def remove_stale_locks(directory: str, older_than: float = STALE_LOCK_SECONDS) -> List[str]:
    """Delete the build locks under `directory` older than `older_than` seconds; returns their paths."""
    removed = []
    now = time.time()
    for lock in glob.glob(os.path.join(directory, "**", "lock"), recursive=True):
        try:
            if now - os.path.getmtime(lock) > older_than:
                os.remove(lock)
                removed.append(lock)
        except FileNotFoundError:   # a build finished and removed it meanwhile
            pass
    return removed


def deepspeed_test_env() -> Dict[str, str]:
    directory = op_cache_dir()
    os.makedirs(directory, exist_ok=True)
    remove_stale_locks(directory)
    return {"TORCH_EXTENSIONS_DIR": directory}


def missing_ops(directory: str) -> List[str]:
    """The builders of CPU_OPS whose library is not in `directory` yet."""
    return [builder for builder, name in CPU_OPS.items()
            if not os.path.isfile(os.path.join(directory, name, f"{name}.so"))]


def start_background_build() -> Optional[subprocess.Popen]:
    """Build the missing ops in a niced child process; None when nothing is missing."""
    env = dict(os.environ, **deepspeed_test_env())
    if not missing_ops(env["TORCH_EXTENSIONS_DIR"]):
        return None
    return subprocess.Popen([sys.executable, "-m", "tests.harness.deepspeed_op_cache"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(19))


def finish_background_build(process: Optional[subprocess.Popen]) -> None:
    """Let the build finish: a build stopped half-way would leave a fresh lock that every
    DeepSpeed run of the next ten minutes waits on (remove_stale_locks spares young ones)."""
    if process is not None:
        process.wait()


def build_ops() -> None:
    from deepspeed.accelerator import get_accelerator
    for builder_name in missing_ops(op_cache_dir()):
        builder = get_accelerator().create_op_builder(builder_name)
        if builder is not None:
            builder.load()


if __name__ == "__main__":
    build_ops()
