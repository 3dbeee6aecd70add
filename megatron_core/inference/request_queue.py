"""The line in front of the model: one request at a time, in arrival order, and the same
sequence on every rank.

    line = RequestLine(run, timeout=60)        # run(request) -> (status, body), on every rank
    status, body = line.submit(request)        # any HTTP thread: waits for its answer
    line.serve()                               # rank 0's main thread, until close() or Ctrl-C
    follow(run)                                # the other ranks' main threads

Any number of HTTP threads read, check and queue requests; only `serve` touches the model.
It takes the oldest waiting request, hands it to the other ranks (one broadcast, which
they wait for in `follow`), runs it and gives the answer to the waiting thread, which
writes it to its client: a client that sends or reads slowly holds its own thread, never
the model.

A request still waiting after `timeout` seconds is answered 503 and leaves the line
before it is broadcast, so every rank runs exactly the requests rank 0 runs; one already
running is waited for (its cost is bounded by the request limits). While the line is
empty rank 0 broadcasts a no-op every IDLE_SECONDS, so the other ranks' broadcast does
not reach the process group's timeout (30 minutes) on a quiet server.
"""
from __future__ import annotations

import collections
import threading
import time
import traceback
from typing import Any, Callable, Deque, Optional, Tuple

from .tool_setup import share_from_first_rank

Answer = Tuple[int, Any]
IDLE_SECONDS = 60.0
_STOP, _IDLE = "stop", "idle"


class _Closed(Exception):
    pass


class _Ticket:
    def __init__(self, request: Any):
        self.request = request
        self.taken = False          # out of the line: running, or answered at shutdown
        self.answer: Optional[Answer] = None
        self.done = threading.Event()


def run_guarded(run: Callable[[Any], Answer], request: Any) -> Answer:
    """run(request), or 500 with one sentence for a failure that is not the request's fault;
    the server keeps serving and the traceback goes to the log."""
    try:
        return run(request)
    except Exception as error:     # noqa: BLE001 - one failed generation must not end the server
        traceback.print_exc()
        return 500, f"generation failed ({type(error).__name__}: {error}); see the server's log."


class RequestLine:
    def __init__(self, run: Callable[[Any], Answer], timeout: float, idle_seconds: float = IDLE_SECONDS):
        self._run, self.timeout, self._idle_seconds = run, timeout, idle_seconds
        self._line: Deque[_Ticket] = collections.deque()
        self._changed = threading.Condition()
        self._closed = False

    def submit(self, request: Any) -> Answer:
        """The answer to `request`, or 503 once it has waited `timeout` seconds without starting."""
        ticket = _Ticket(request)
        with self._changed:
            if self._closed:
                return 503, "the server is shutting down; try again later."
            self._line.append(ticket)
            self._changed.notify_all()
        if not ticket.done.wait(self.timeout):
            with self._changed:
                if not ticket.taken:
                    self._line.remove(ticket)
                    return 503, (f"the request waited {self.timeout:g} s (--request-timeout) while the model "
                                 f"ran earlier requests; try again later.")
            ticket.done.wait()
        return ticket.answer

    def _take(self) -> Optional[_Ticket]:
        """The oldest waiting ticket (now taken), None after idle_seconds of nothing; raises
        _Closed once closed."""
        with self._changed:
            deadline = time.monotonic() + self._idle_seconds
            while not self._line and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            if self._closed:
                raise _Closed
            ticket = self._line.popleft()
            ticket.taken = True
            return ticket

    def serve(self) -> None:
        """Rank 0: run the queued requests in order until close(); then the other ranks stop too."""
        try:
            while True:
                try:
                    ticket = self._take()
                except _Closed:
                    return
                share_from_first_rank(_IDLE if ticket is None else ticket.request)
                if ticket is not None:
                    ticket.answer = run_guarded(self._run, ticket.request)
                    ticket.done.set()
        finally:
            self.close()
            stop_followers()

    def close(self) -> None:
        """Stop serve() after the running request; the waiting ones are answered 503."""
        with self._changed:
            self._closed = True
            waiting, self._line = list(self._line), collections.deque()
            for ticket in waiting:
                ticket.taken = True
            self._changed.notify_all()
        for ticket in waiting:
            ticket.answer = (503, "the server is shutting down; try again later.")
            ticket.done.set()


def stop_followers() -> None:
    """Rank 0, serving no more: the other ranks' follow() returns."""
    share_from_first_rank(_STOP)


def follow(run: Callable[[Any], Answer]) -> None:
    """The other ranks: run each request rank 0 hands over, until it says stop."""
    while True:
        request = share_from_first_rank(None)
        if isinstance(request, str) and request == _STOP:
            return
        if not (isinstance(request, str) and request == _IDLE):
            run_guarded(run, request)
