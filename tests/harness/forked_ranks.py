"""Start an entry point's ranks by forking one process that has imported it, instead of N fresh ones.

    python -m tests.harness.forked_ranks [--grace SECONDS] [--faults "OPTIONS"] LOGS NPROC SCRIPT FLAGS...

For tests whose subject is the run, not its launcher (entry_points.run_ranks). A fresh rank
spends ~5 s of CPU importing torch, torch._dynamo (every torch.optim step loads it) and the
package before it does anything, and on two cores eight ranks pay that one after another.
Here one process imports the script's modules (its body runs under another name, so its
`if __name__ == "__main__"` block does not), then forks NPROC children while it runs no
other thread. Each child sets what a launcher sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE; MASTER_ADDR and MASTER_PORT come from the caller), writes its stdout
and stderr to LOGS/<rank>.out and LOGS/<rank>.err, and runs the script as __main__ with
sys.argv = [SCRIPT, *FLAGS], and exits with the script's status. LOGS/statuses gets the
ranks' exit statuses (-9: killed), space-separated; ranks still running SECONDS (60) after
one exited are killed, so a crashed rank does not leave the others waiting in a collective.
--faults: faults.py's options (space-separated), installed in the parent before the fork.
main(..., launcher=False) with NPROC 1 sets none of the launcher's variables: the script runs as
`python SCRIPT FLAGS` would (entry_points.run_forked).
"""
from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys
import threading
import time
import traceback

GRACE_SECONDS = 60


def run_rank(rank: int, nproc: int, logs: str, script: str, flags, launcher: bool = True) -> int:
    """In a forked child: the script as __main__, its output in LOGS/<rank>.out and .err; its exit status."""
    if launcher:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc))
    for fd, name in ((1, "out"), (2, "err")):
        log = os.open(os.path.join(logs, f"{rank}.{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, fd)
        os.close(log)
    # A child forked from pytest inherits its capture's sys.stdout / sys.stderr: write to the fds again.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.argv = [script, *flags]
    sys.path.insert(0, os.path.dirname(script))     # as `python script` puts the script's folder first
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def main(logs: str, nproc: int, script: str, flags, grace: float = GRACE_SECONDS, faults=(),
         launcher: bool = True) -> int:
    runpy.run_path(script, run_name="__mcore_preload__")     # the imports, not the run
    if faults:
        from .faults import install
        install(faults)
    import torch._dynamo  # noqa: F401  (loaded by the first optimizer step otherwise, in every rank)
    assert threading.active_count() == 1, "forking needs a process without other threads"
    sys.stdout.flush(), sys.stderr.flush()
    children = {}
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = run_rank(rank, nproc, logs, script, flags, launcher)
                atexit._run_exitfuncs()      # what the interpreter runs at a normal exit
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(status)
        children[pid] = rank
    statuses, deadline = {}, None
    while len(statuses) < nproc:
        pid, wait_status = os.waitpid(-1, os.WNOHANG)
        if pid:
            statuses[children[pid]] = os.waitstatus_to_exitcode(wait_status)
            deadline = deadline or time.monotonic() + grace
        elif deadline is not None and time.monotonic() > deadline:
            for pid, rank in children.items():
                if rank not in statuses:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        else:
            time.sleep(0.05)
    with open(os.path.join(logs, "statuses"), "w") as f:
        f.write(" ".join(str(statuses[rank]) for rank in range(nproc)))
    return 0


if __name__ == "__main__":
    argv, options = sys.argv[1:], {"--grace": str(GRACE_SECONDS), "--faults": ""}
    while argv[0] in options:
        options[argv[0]], argv = argv[1], argv[2:]
    sys.exit(main(argv[0], int(argv[1]), argv[2], argv[3:], float(options["--grace"]), options["--faults"].split()))
