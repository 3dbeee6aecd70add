"""Real OS failures for a tool's output directory, for tests that run the tools.

`output_fault(kind, base)` gives a directory that makes writing fail the way `kind` says,
and a `preexec_fn` for the tool's process where the failure needs one:

* "permission_denied": a directory with mode 0555 (EACCES). Root ignores file modes, so
  as root the tool's process first drops the capabilities that let it (CAP_DAC_OVERRIDE,
  CAP_DAC_READ_SEARCH, CAP_FOWNER) from its bounding set, and the executed tool then runs
  as a root without them;
* "disk_full": a 32 KiB tmpfs mounted for the test (ENOSPC; needs mount rights);
* "file_size_limit": RLIMIT_FSIZE of 16 KiB on the tool's process (Python ignores SIGXFSZ),
  so writes past it fail with EFBIG, as on a full quota; works for anyone;
* "read_only": a tmpfs mounted read-only (EROFS), else a read-only /sys or /proc/sys;
* "missing_parent": a directory that does not exist.

`reason` is the system's own words for the failure (strerror), which the tools' message
must contain. A fault this machine cannot produce raises FaultUnavailable with why.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

KINDS = ("permission_denied", "disk_full", "file_size_limit", "read_only", "missing_parent")
FILE_SIZE_LIMIT = 16 << 10
TMPFS_KIB = 32

_PR_CAPBSET_DROP = 24
_DAC_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


class FaultUnavailable(Exception):
    """This machine cannot produce the fault (no mount rights, say); the message says why."""


@dataclass
class OutputFault:
    kind: str
    directory: str
    reason: str                                   # strerror the tool's message must contain
    preexec_fn: Optional[Callable[[], None]] = None

    def entries(self) -> list:
        """What the directory holds now (nothing, for one that does not exist)."""
        return sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []


def _drop_dac_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _DAC_CAPABILITIES:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@contextlib.contextmanager
def _mounted_tmpfs(directory: str, read_only: bool) -> Iterator[None]:
    os.makedirs(directory)
    options = f"size={TMPFS_KIB}k" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", directory],
                              capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise FaultUnavailable(f"cannot run mount: {e}") from None
    if done.returncode != 0:
        raise FaultUnavailable(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", directory], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", directory], capture_output=True)


def _read_only_system_directory() -> Optional[str]:
    """A directory of a file system mounted read-only, where creating a file gives EROFS."""
    for directory in ("/sys", "/proc/sys"):
        try:
            fd, path = tempfile.mkstemp(dir=directory)
        except OSError as e:
            if e.errno == errno.EROFS:
                return directory
            continue
        os.close(fd)  # writable after all: leave nothing behind
        os.remove(path)
    return None


@contextlib.contextmanager
def output_fault(kind: str, base: str) -> Iterator[OutputFault]:
    """The fault `kind` (see the module docstring) in a new directory under `base`."""
    directory = os.path.join(base, f"out_{kind}")
    if kind == "permission_denied":
        os.makedirs(directory)
        os.chmod(directory, 0o555)
        try:
            yield OutputFault(kind, directory, os.strerror(errno.EACCES),
                              _drop_dac_capabilities if os.geteuid() == 0 else None)
        finally:
            os.chmod(directory, 0o755)
    elif kind == "disk_full":
        with _mounted_tmpfs(directory, read_only=False):
            yield OutputFault(kind, directory, os.strerror(errno.ENOSPC))
    elif kind == "file_size_limit":
        os.makedirs(directory)
        yield OutputFault(kind, directory, os.strerror(errno.EFBIG), _limit_file_size)
    elif kind == "read_only":
        try:
            with _mounted_tmpfs(directory, read_only=True):
                yield OutputFault(kind, directory, os.strerror(errno.EROFS))
        except FaultUnavailable as unavailable:
            system = _read_only_system_directory()
            if system is None:
                raise FaultUnavailable(f"{unavailable}, and neither /sys nor /proc/sys is "
                                       f"read-only") from None
            yield OutputFault(kind, system, os.strerror(errno.EROFS))
    elif kind == "missing_parent":
        yield OutputFault(kind, directory, "does not exist; create it first")
    else:
        raise ValueError(f"unknown fault {kind!r}; use one of {', '.join(KINDS)}")


@dataclass
class FaultRun:
    fault: OutputFault
    returncode: int
    stderr: str
    entries_before: list
    entries_after: list

    def clean_failure_line(self) -> str:
        """The one line a tool printed, after checking that it failed the way every tool
        must: exit status 2, no traceback, the system's reason in the sentence, and the
        directory as it was (no output, no temporary)."""
        lines = self.stderr.strip().splitlines()
        assert self.returncode == 2, (self.returncode, self.stderr)
        assert len(lines) == 1 and "Traceback" not in self.stderr, self.stderr
        assert lines[0].startswith("error: ") and self.fault.reason in lines[0], lines[0]
        assert ".tmp" not in lines[0], lines[0]  # the file asked for, not a temporary
        assert self.entries_after == self.entries_before, (self.entries_before, self.entries_after)
        return lines[0]


def run_under_output_fault(kind: str, base: str, command: Callable[[str], list],
                           timeout: float = 300, env: Optional[dict] = None) -> FaultRun:
    """Run `command(output_directory)` (an argv) with the fault `kind` on that directory;
    what the directory held before and after comes back with the exit status and stderr.
    Raises FaultUnavailable where the machine cannot produce the fault."""
    with output_fault(kind, base) as fault:
        before = fault.entries()
        done = subprocess.run(command(fault.directory), capture_output=True, text=True,
                              timeout=timeout, env=env, preexec_fn=fault.preexec_fn)
        return FaultRun(fault, done.returncode, done.stderr, before, fault.entries())


def failure_line_or_skip(kind: str, base: str, command: Callable[[str], list], timeout: float = 300,
                         env: Optional[dict] = None):
    """(the tool's one failure line, the faulty directory) under fault `kind`, checked as
    FaultRun.clean_failure_line does; skips the calling test where the machine cannot make
    the fault."""
    import pytest
    try:
        fault_run = run_under_output_fault(kind, base, command, timeout=timeout, env=env)
    except FaultUnavailable as e:
        pytest.skip(str(e))
    return fault_run.clean_failure_line(), fault_run.fault.directory
