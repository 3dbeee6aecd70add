"""Run a function on N gloo processes and report the first failing rank.

    run_distributed(check_column_parallel, world_size=4, tp=2)

Workers are forked from this process when that is safe (it runs no other thread and has no
process group of its own): they inherit the imported torch and test module instead of
importing them again, which costs about 5 s of CPU per worker (torch, plus torch._dynamo
that every torch.optim step loads) and made these tests spend most of their time starting
up. Otherwise, or with MCORE_TEST_START_METHOD=spawn, they are spawned like torchrun's
workers; `fn` must then be importable by name (a module-level function), so write it so
either way. Entry-point tests (tests.harness.entry_points) start processes through
the real launchers, or fork an entry point's ranks (forked_ranks) where the launcher is not
what they check. Each worker initializes
torch.distributed, runs `fn(*args, **kwargs)` and tears the groups down. The parent
never waits longer than `timeout` seconds: a hung collective kills every worker and
raises with the ranks that did not finish.
"""
from __future__ import annotations

import datetime
import os
import queue as queue_module
import socket
import threading
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class DistributedTestFailure(AssertionError):
    """A worker raised, crashed or hung; the message carries its traceback."""


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, collective_timeout: float,
            fn: Callable, args: tuple, kwargs: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    # Workers share two cores: extra intra-op threads only thrash.
    torch.set_num_threads(1)
    from megatron_core.mpu import parallel_state
    parallel_state.destroy_model_parallel()     # nothing a forking parent set up leaks in
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=collective_timeout))
        # Every rank's connections are up before any rank may finish and close its own: a check
        # without collectives would otherwise let rank 1 exit while rank 0 still connects to it.
        dist.barrier()
        fn(*args, **kwargs)
        results.put((rank, None))
    except BaseException:  # report everything, including KeyboardInterrupt in a worker
        results.put((rank, traceback.format_exc()))
    finally:
        parallel_state.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def start_method() -> str:
    """"fork" when forking this process is safe, else "spawn"; MCORE_TEST_START_METHOD overrides.

    Forking copies only the calling thread, so a lock another thread holds (logging, a server)
    would stay locked in the child; and a child must not share this process's process group.
    The workers set one intra-op thread before any torch op, so the OpenMP pool this process
    may have started is never entered in a child."""
    forced = os.environ.get("MCORE_TEST_START_METHOD")
    if forced:
        return forced
    return "fork" if threading.active_count() == 1 and not dist.is_initialized() else "spawn"


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 180.0,
                    backend: str = "gloo", **kwargs: Any) -> None:
    """Run `fn(*args, **kwargs)` on `world_size` processes; raise if any rank fails."""
    ctx = mp.get_context(start_method())
    results = ctx.Queue()
    port = find_free_port()
    collective_timeout = max(30.0, timeout * 0.8)
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(rank, world_size, port, backend, collective_timeout, fn, args, kwargs, results))
             for rank in range(world_size)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    finished, failures, crashed = set(), {}, set()

    def note_crashes():
        # A worker that died without reporting (segfault, os._exit) never will.
        for rank, proc in enumerate(procs):
            if rank not in finished and not proc.is_alive() and proc.exitcode not in (0, None):
                finished.add(rank)
                crashed.add(rank)
                failures[rank] = f"worker exited with code {proc.exitcode} without a traceback"

    def collect(seconds):
        try:
            rank, error = results.get(timeout=seconds)
        except queue_module.Empty:
            note_crashes()
            return
        finished.add(rank)
        if error is not None:
            failures.setdefault(rank, error)

    try:
        while len(finished) < world_size and not failures:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            collect(min(remaining, 0.5))
        if failures:
            # Let the other ranks report (or be seen dead) before stopping everything.
            grace = time.monotonic() + 3.0
            while len(finished) < world_size and time.monotonic() < grace:
                collect(0.2)
            note_crashes()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.join(timeout=1.0 if not failures and len(finished) == world_size else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    if failures:
        # A crashed rank is the likely root cause of its peers' connection errors.
        first = min(crashed) if crashed else next(iter(failures))
        others = sorted(set(failures) - {first})
        raise DistributedTestFailure(
            f"{fn.__name__} failed on rank {first} of {world_size}"
            + (f" (also ranks {others})" if others else "") + f":\n{failures[first]}")
    if len(finished) < world_size:
        hung = sorted(set(range(world_size)) - finished)
        raise DistributedTestFailure(
            f"{fn.__name__} timed out after {timeout:.0f}s on {world_size} ranks; "
            f"ranks {hung} never finished (a collective that not every rank entered?)")
