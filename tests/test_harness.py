"""The multi-process harness reports the failing rank's traceback and never hangs."""
import time

import pytest
import torch.distributed as dist

from tests.harness import DistributedTestFailure, run_distributed


def _fail_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("rank one is broken on purpose")


def _hang_on_rank_zero():
    if dist.get_rank() == 0:
        time.sleep(600)


def _crash_on_rank_one():
    import os
    if dist.get_rank() == 1:
        os._exit(3)
    dist.barrier()


def test_failure_shows_rank_and_traceback():
    with pytest.raises(DistributedTestFailure, match=r"(?s)failed on rank 1 of 2.*rank one is broken on purpose"):
        run_distributed(_fail_on_rank_one, 2, timeout=60)


def test_hang_times_out():
    start = time.monotonic()
    with pytest.raises(DistributedTestFailure, match=r"timed out after 8s .* ranks \[0\] never finished"):
        run_distributed(_hang_on_rank_zero, 2, timeout=8)
    assert time.monotonic() - start < 30


def test_crashed_worker_reported():
    with pytest.raises(DistributedTestFailure, match="exited with code 3"):
        run_distributed(_crash_on_rank_one, 2, timeout=60)
