"""One family for the user's mistakes.

A `UserError` carries one sentence that names the file, line, flag or value at fault and
says what to do. Command-line tools and entry points print just that sentence and exit 2
(see `megatron_core.cli.run`); anything that is not a `UserError` (or an OS error about a
path) is a bug in this package and keeps its traceback.

The subclasses also derive from ValueError, as the older per-package errors did, so code
that caught ValueError keeps working.
"""
import errno


class UserError(Exception):
    """A mistake in the user's input, files or flags; the message is the whole story."""


class ConfigError(UserError, ValueError):
    """An invalid model or training configuration."""


class DataError(UserError, ValueError):
    """A problem with the user's data files or data flags."""


class ConversionError(UserError, ValueError):
    """A state dict or config that cannot be converted."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, damaged or does not fit the model being built."""


class LaunchError(UserError, ValueError):
    """A launcher environment or hostfile that does not add up."""


class RankFailure(UserError):
    """Another rank of the run died or hung (not the user's mistake, but as plain a story): the
    message names the rank and the iteration, and every other rank exits with it."""


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
