"""Where DeepSpeed's JIT-compiled C++ ops live for test runs, and the stale build locks they leave.

DeepSpeed builds `deepspeed_shm_comm` (and `cpu_adam` under optimizer offload) with torch's
cpp_extension at every engine start on CPU: about 45 s the first time, then loaded from
TORCH_EXTENSIONS_DIR. A build killed half-way leaves `<dir>/<op>/lock`, and every later
build waits on it forever. So tests run DeepSpeed with

    env = deepspeed_test_env()      # {"TORCH_EXTENSIONS_DIR": op_cache_dir()}, stale locks removed

op_cache_dir(): $MCORE_DS_OP_CACHE, else $TORCH_EXTENSIONS_DIR, else /tmp/mcore_ds_op_cache,
shared between runs so the build is paid once per machine (CI keeps it inside its run
by setting MCORE_DS_OP_CACHE).
"""
from __future__ import annotations

import glob
import os
import time
from typing import Dict, List

DEFAULT_OP_CACHE = "/tmp/mcore_ds_op_cache"
# A live build of one op takes about a minute on two cores; a lock older than this is a killed build's.
STALE_LOCK_SECONDS = 600


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
