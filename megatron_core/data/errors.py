"""The one exception type for user mistakes in the data pipeline.

A DataError carries a single sentence that names the file, line or flag at fault and
says what to do; command-line tools print just that sentence and exit with status 2.
"""


class DataError(ValueError):
    """A problem with the user's data files or data flags (not a bug in this package)."""
