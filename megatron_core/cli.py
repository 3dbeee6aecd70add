"""The one runner every command-line tool and entry point uses.

    if __name__ == "__main__":
        run(main)

- a `UserError` prints `error: <sentence>` and exits 2;
- an OS error about a path (permission denied, disk full, read-only file system, missing
  file) prints one sentence naming the path and the fix, and exits 2;
- Ctrl-C exits 130 (SIGINT's conventional status) with one line;
- anything else is a bug in this package: it propagates with its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .errors import UserError, describe_os_error


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]],
        argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Call main(argv) and exit with its status, turning user mistakes into one sentence."""
    try:
        status = main(argv)
    except UserError as e:
        _fail(f"error: {e}", 2)
    except KeyboardInterrupt:
        _fail("interrupted.", 130)
    except OSError as e:
        if e.errno is None:      # not an error about a path (e.g. a socket library's own)
            raise
        _fail(f"error: {describe_os_error(e)}", 2)
    sys.exit(status or 0)


def _fail(message: str, status: int) -> NoReturn:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def exit_now(status: int) -> NoReturn:
    """Exit without running atexit handlers or joining pool threads (after an interrupt)."""
    sys.stderr.flush()
    os._exit(status)
