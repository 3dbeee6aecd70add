"""One family for the user's mistakes.

A `UserError` carries one sentence that names the file, line, flag or value at fault and
says what to do. Command-line tools and entry points print just that sentence and exit 2
(see `megatron_core.cli.run`); anything that is not a `UserError` (or an OS error about a
path) is a bug in this package and keeps its traceback.

The subclasses also derive from ValueError, as the older per-package errors did, so code
that caught ValueError keeps working.
"""


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
