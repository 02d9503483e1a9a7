"""The exceptions for what a user can act on, and the exit codes they become (a public contract).

`python -m entrypoint` prints a ConfigError's message as one line and exits with `EXIT_CONFIG` (2), an
OutOfMemory's with `EXIT_OUT_OF_MEMORY` (3); anything else is a bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_OUT_OF_MEMORY = 3  # the GPU ran out of memory: the same settings fail the same way; lower them and run again
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; run again to resume


class ConfigError(Exception):
    """A problem with the job's settings or inputs, explained in one line."""


class OutOfMemory(Exception):
    """The GPU ran out of memory training or evaluating, explained in one line: where, on what batch, and the
    settings that lower memory."""


class Preempted(Exception):
    """Training stopped on SIGTERM (a spot preemption notice) after saving a checkpoint."""
