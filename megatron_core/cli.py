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

import errno
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .errors import UserError

_OS_ERROR_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.ENOSPC: "free some space or choose another disk",
    errno.EDQUOT: "free some space or raise the quota",
    errno.EFBIG: "it outgrew the file size limit (ulimit -f) or the file system's; raise the "
                 "limit or choose another disk",
    errno.EROFS: "the file system is read-only; choose a writable directory",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a component of the path is a file, not a directory; check the path",
    errno.EISDIR: "it is a directory; give a file path",
    errno.EEXIST: "remove it or choose another path",
}


def describe_os_error(error: OSError) -> str:
    """One sentence for an OS error: the path, what the system said, and the fix."""
    path = error.filename if error.filename is not None else "a file"
    if error.filename2 is not None:
        path = f"{error.filename} -> {error.filename2}"
    reason = error.strerror or str(error)
    fix = _OS_ERROR_FIXES.get(error.errno, "check the path and the disk")
    return f"cannot use {path}: {reason}; {fix}."


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
