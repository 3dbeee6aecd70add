"""The processes that preprocess one input together (tools/preprocess_data.py --distributed).

Three things pass between them, each once: rank 0 tells every rank the plan (the partitions,
which are done; `broadcast`), every rank hands rank 0 its throughput when its share is done
(`gather`, which is also the barrier: it returns once every rank has recorded its last
partition), and rank 0 merges. A single process is the same sequence with nothing to send.
"""
from __future__ import annotations

import datetime
import socket
from typing import Any, List


class Team:
    """One process: rank 0 of a world of one."""

    rank = 0
    world_size = 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        return value

    def gather(self, value: Any) -> List[Any]:
        """Every rank's `value`, in rank order, once every rank has called it."""
        return [value]

    def close(self) -> None:
        pass

    @property
    def host(self) -> str:
        return socket.gethostname()


class GlooTeam(Team):
    """Ranks joined by torch.distributed over gloo: plain TCP, so any host of a cluster can
    take part, GPU or not. The rendezvous is the launcher's (env://: MASTER_ADDR, MASTER_PORT);
    `timeout` bounds how long a rank waits at the gather for the slowest one."""

    def __init__(self, rank: int, world_size: int, timeout: datetime.timedelta):
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
        self._dist = dist
        self.rank, self.world_size = rank, world_size

    def broadcast(self, value: Any) -> Any:
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> List[Any]:
        values: List[Any] = [None] * self.world_size
        self._dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        self._dist.destroy_process_group()
