"""A progress line every few batches on rank 0 (stderr): done / total, tokens/s, ETA; and
the closing summary."""
from __future__ import annotations

import sys
import time

import torch.distributed as dist


def _first_rank() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class Progress:
    def __init__(self, what: str, total: int, interval: int, stream=sys.stderr):
        self.what, self.total, self.interval, self.stream = what, total, interval, stream
        self.start = time.perf_counter()
        self.done = self.tokens = self.batches = 0

    def update(self, items: int, tokens: int) -> None:
        self.done, self.tokens, self.batches = self.done + items, self.tokens + tokens, self.batches + 1
        if self.interval > 0 and self.batches % self.interval == 0 and self.done < self.total:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            eta = elapsed * (self.total - self.done) / max(self.done, 1)
            self._print(f"> {self.done}/{self.total} {self.what} ({100 * self.done / self.total:.0f}%), "
                        f"{self.tokens / elapsed:,.0f} tokens/s, ETA {eta:.0f} s")

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.start
        self._print(f"> evaluated {self.done} {self.what}, {self.tokens:,} tokens in {elapsed:.1f} s "
                    f"({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s)")

    def _print(self, line: str) -> None:
        if _first_rank():
            print(line, file=self.stream, flush=True)
