"""Naming the rank that stopped: every rank answers pings, so its peers can tell who died.

When a rank's process dies (or hangs), its peers' collectives fail: at once with gloo's
"Connection closed by peer <address>" for the ranks wired to it, after
--distributed-timeout-minutes for the others. Neither names a rank. So each rank of a
multi-process run listens on a small TCP port of its own, answered by a daemon thread, and
publishes the address in the rendezvous store at the start (while all is well, each rank
reads every other's). When a collective of the run fails, the rank pings its peers: a dead
process's port refuses at once, a hung one does not answer within PING_SECONDS; those are
the ranks that stopped. Nothing is sent while the run is healthy.

The first rank to decide writes its sentence to the store, and later ones (whose own
failure may be a live peer that already left) repeat it instead of naming that peer. A rank
that leaves through an exception of its own writes its first line there too, so its peers
can quote it. The store lives in torchrun's agent, or in rank 0 without one; a store that
is gone is only skipped (a plain connect checks it first: a store request to a dead host
fails with c10d's own logged traceback).

    watch = RankWatch.start()          # nothing to do in a world of one
    try:
        ... the run ...
    except Exception as error:
        watch.explain(error, iteration)   # raises RankFailure naming the stopped rank, if one did
        raise
    finally:
        watch.stop()

RankFailure is one sentence, e.g. "rank 1 on host node2 (10.0.0.2) stopped responding during
iteration 7 (its process died or hung); the other ranks exit; see its log." A failed collective while every peer
answers is not a stopped rank: the original error propagates.
"""
from __future__ import annotations

import datetime
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import torch.distributed as dist

from ..errors import RankFailure

PING_SECONDS = 5.0
STORE_TIMEOUT = datetime.timedelta(seconds=60)    # the start: every rank publishes its address
ANSWER = b"alive"


class RankWatch:
    def __init__(self, rank: int, world_size: int, host: str, port: int):
        self.rank, self.world_size, self.host, self.port = rank, world_size, host, port
        self.prefix = f"mcore_rank_watch/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.peers: List[Tuple[str, int]] = []
        self.peer_hosts: List[str] = []        # "hostname (address)" of each rank, for the sentence
        self._listener: Optional[socket.socket] = None
        self._store = None

    @classmethod
    def start(cls) -> "RankWatch":
        """The watch of this rank of the initialized world (collective through the store)."""
        watch = cls(dist.get_rank(), dist.get_world_size(), os.environ.get("MASTER_ADDR", "127.0.0.1"),
                    int(os.environ.get("MASTER_PORT", "0")))
        if watch.world_size > 1:
            watch._listen()
        return watch

    def _listen(self) -> None:
        self._store = dist.TCPStore(self.host, self.port, is_master=False, timeout=STORE_TIMEOUT)
        self._listener = socket.create_server((self._own_address(), 0))
        threading.Thread(target=self._answer, daemon=True, name="mcore-rank-watch").start()
        host, port = self._listener.getsockname()[:2]
        self._store.set(f"{self.prefix}/address/{self.rank}", f"{host} {port} {socket.gethostname()}")
        for rank in range(self.world_size):
            peer_host, peer_port, hostname = self._store.get(f"{self.prefix}/address/{rank}").decode().split(" ", 2)
            self.peers.append((peer_host, int(peer_port)))
            self.peer_hosts.append(f"{hostname} ({peer_host})")

    def _own_address(self) -> str:
        """The address peers reach this host by: the one this host uses towards the store."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((self.host, self.port or 1))
                return probe.getsockname()[0]
            except OSError:
                return "127.0.0.1"

    def _answer(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:        # closed by stop()
                return
            with connection:
                try:
                    connection.sendall(ANSWER)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    # --- after a failure --------------------------------------------------------------------------

    def explain(self, error: BaseException, iteration: int) -> None:
        """Raise RankFailure when `error` came from a rank that stopped; otherwise leave a note of
        this rank's own error for its peers and return (the caller re-raises)."""
        if self.world_size == 1 or isinstance(error, RankFailure):
            return
        verdict = self._verdict(iteration) if isinstance(error, RuntimeError) else None
        if verdict is not None:
            raise RankFailure(verdict) from None
        text = str(error).strip()
        self._store_call(lambda store: store.set(self._note_key(self.rank), f"{type(error).__name__}: "
                                                 f"{text.splitlines()[0] if text else ''}"))

    def _verdict(self, iteration: int) -> Optional[str]:
        known = self._store_call(lambda store: store.get(self._verdict_key()).decode()
                                 if store.check([self._verdict_key()]) else None)
        if known:
            return known
        with ThreadPoolExecutor(max_workers=min(32, self.world_size)) as pool:
            answers = list(pool.map(_answers, self.peers))
        stopped = [rank for rank, alive in enumerate(answers) if rank != self.rank and not alive]
        if not stopped:
            return None
        notes = self._store_call(lambda store: [f"rank {rank}: {store.get(self._note_key(rank)).decode()}"
                                                for rank in stopped if store.check([self._note_key(rank)])]) or []
        where = lambda rank: f"rank {rank} on host {self.peer_hosts[rank]}"      # a lost host is named too
        who = where(stopped[0]) if len(stopped) == 1 else f"ranks {', '.join(map(where, stopped))}".replace(
            "ranks rank ", "ranks ")
        if notes:
            sentence = f"{who} stopped during iteration {iteration} ({'; '.join(notes)}); the other ranks exit."
        else:
            sentence = (f"{who} stopped responding during iteration {iteration} (its process died or hung); the "
                        f"other ranks exit; see its log.")
        self._store_call(lambda store: store.compare_set(self._verdict_key(), "", sentence))
        return self._store_call(lambda store: store.get(self._verdict_key()).decode()) or sentence

    def _store_call(self, request):
        """request(store), or None when the store's host is gone."""
        try:
            socket.create_connection((self.host, self.port), timeout=PING_SECONDS).close()
            return request(self._store)
        except Exception:
            return None

    def _verdict_key(self) -> str:
        return f"{self.prefix}/verdict"

    def _note_key(self, rank: int) -> str:
        return f"{self.prefix}/note/{rank}"


def _answers(address: Tuple[str, int]) -> bool:
    """Whether the rank at `address` answers: refused (its process is gone) or silent (hung) is no."""
    try:
        with socket.create_connection(address, timeout=PING_SECONDS) as connection:
            connection.settimeout(PING_SECONDS)
            return connection.recv(len(ANSWER)) == ANSWER
    except OSError:
        return False
