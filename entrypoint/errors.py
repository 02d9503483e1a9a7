"""The one exception type for problems a user can fix (bad settings, missing files, bad data).

`python -m entrypoint` prints its message as one line and exits with `EXIT_CONFIG` (2);
anything else is a bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; run again to resume


class ConfigError(Exception):
    """A problem with the job's settings or inputs, explained in one line."""


class Preempted(Exception):
    """Training stopped on SIGTERM (a spot preemption notice) after saving a checkpoint."""
