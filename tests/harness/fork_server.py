"""One process per test session that imports torch once and forks every forked-ranks launch.

    ranks_done = fork_server.launch(logs, nproc, script, flags, env, grace, faults, timeout)
    ranks_done = fork_server.launch(..., preload=("deepspeed",))   # a second server, with deepspeed imported

entry_points.run_forked_ranks starts its ranks here. forked_ranks.py alone saves each rank of a
launch its imports (~5 s of CPU: torch, torch._dynamo, the package), but its own process still
pays them once per launch, and on two cores that is most of a tiny run's wall time. This server
pays them once per test session (per preload set): it imports torch, torch._dynamo, the extra
`preload` modules and, on first use, each script's imports (the script's body runs under another
name, as forked_ranks does), then for each launch forks a starter that takes the launch's
environment and working directory exactly, starts a new session (a timeout kills its process
group) and runs forked_ranks.main: the ranks, their logs and LOGS/statuses as before. The server
itself runs nothing but imports and forks, so a starter begins from a process that never built
a tensor, and it has no other thread.

What a launch cannot change: environment variables read while importing (the server's are
clean_env()'s: OMP_NUM_THREADS=1, this checkout on PYTHONPATH, no launcher variables), so tests
whose subject is the start of a process (one sentence on stderr, a launcher) start fresh ones
(entry_points.run_entry_point, run_plain_ranks) instead.

    python -m tests.harness.fork_server [MODULE...]     # the server: JSON requests on stdin
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Dict, Optional, Sequence, Tuple

from .forked_ranks import main as run_forked_ranks_here
from .tiny_corpus import ROOT


# --- the server ------------------------------------------------------------------------------------

def _start_launch(request: dict, protocol_fd: int) -> int:
    """In the forked starter: the launch's own process group, environment, directory and output."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)    # the server ignores it; a run does not
    os.close(protocol_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(os.path.join(request["logs"], "starter.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1), os.dup2(log, 2)
    os.close(log)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    return run_forked_ranks_here(request["logs"], request["nproc"], request["script"], request["flags"],
                                 request["grace"], request["faults"], request["launcher"])


def serve(preload: Sequence[str]) -> None:
    # The protocol has its own descriptor: what the imports print goes to stderr, not into a reply.
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (every torch.optim step loads it)
    for module in preload:
        importlib.import_module(module)
    imported = set()
    protocol = os.fdopen(protocol_fd, "w", buffering=1)
    for line in iter(sys.stdin.readline, ""):
        request = json.loads(line)
        if request["script"] not in imported:
            imported.add(request["script"])
            try:
                runpy.run_path(request["script"], run_name="__mcore_preload__")   # the imports, not the run
            except BaseException:   # the starter imports it again and reports the failure in the launch's logs
                traceback.print_exc()
        assert threading.active_count() == 1, "forking needs a process without other threads"
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = _start_launch(request, protocol.fileno())
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(status)
        protocol.write(json.dumps({"pid": pid}) + "\n")
        _, wait_status = os.waitpid(pid, 0)
        protocol.write(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}) + "\n")


# --- the client (the test session) -----------------------------------------------------------------

class ForkServer:
    def __init__(self, preload: Tuple[str, ...], env: Dict[str, str]):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="fork_server_", suffix=".log")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.harness.fork_server", *preload], env=env,
                                        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, bufsize=1)
        self.lock = threading.Lock()

    def _reply(self, timeout: Optional[float]) -> Optional[dict]:
        """The server's next reply; None when none came within `timeout` seconds."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"the fork server exited ({self.process.poll()}):\n{self.log.read()[-4000:]}")
        return json.loads(line)

    def launch(self, request: dict, timeout: float) -> int:
        """The starter's exit status (-9: killed at `timeout`)."""
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            pid = self._reply(timeout=120)["pid"]
            reply = self._reply(timeout)
            if reply is None:
                os.killpg(pid, signal.SIGKILL)
                reply = self._reply(None)
            return reply["status"]

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


_servers: Dict[Tuple[str, ...], ForkServer] = {}
_servers_lock = threading.Lock()


def launch(logs: str, nproc: int, script: str, flags: Sequence[str], env: Dict[str, str], grace: float,
           faults: Sequence[str] = (), timeout: float = 300, preload: Sequence[str] = (),
           server_env: Optional[Dict[str, str]] = None, launcher: bool = True) -> int:
    """forked_ranks.main(logs, nproc, script, flags, grace, faults, launcher) with `env` in a starter
    forked from the session's server for `preload` (started on first use with `server_env`, default
    `env`); returns the starter's exit status (-9 if it was killed at `timeout`)."""
    key = tuple(preload)
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server.process.poll() is not None:
            server = _servers[key] = ForkServer(key, server_env or env)
    request = {"logs": logs, "nproc": nproc, "script": script, "flags": list(flags), "env": env, "grace": grace,
               "faults": list(faults), "launcher": launcher, "cwd": ROOT}
    return server.launch(request, timeout)


@atexit.register
def _stop_servers() -> None:
    for server in _servers.values():
        server.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C in pytest stops the launch, not the server first
    serve(sys.argv[1:])
