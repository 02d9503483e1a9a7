"""The exceptions for what a user can act on, and the exit codes they become (a public contract).

`python -m entrypoint` prints a ConfigError's message as one line and exits with `EXIT_CONFIG` (2), an
OutOfMemory's with `EXIT_OUT_OF_MEMORY` (3), a RecoverElsewhere's with `EXIT_RECOVER_ELSEWHERE` (76); anything else is a
bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_OUT_OF_MEMORY = 3  # the GPU ran out of memory: the same settings fail the same way; lower them and run again
EXIT_DATA = 65  # EX_DATAERR: the run's own data proved unusable once the model ran (an on-policy round without pairs)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a sampler or judge endpoint kept failing; what was done is kept, run again
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; run again to resume
# A restart of a SkyPilot managed job landed on a GPU its memory plan does not fit (recovery may pick any GPU of the
# YAML's set): nothing is wrong with the settings, the run needs another machine. The YAMLs recover on it.
EXIT_RECOVER_ELSEWHERE = 76


class ConfigError(Exception):
    """A problem with the job's settings or inputs, explained in one line."""


class OutOfMemory(Exception):
    """The GPU ran out of memory training or evaluating, explained in one line: where, on what batch, and the
    settings that lower memory."""


class DoesNotFit(ConfigError):
    """The memory plan does not fit this GPU: a ConfigError (exit 2) on a first attempt, where the settings are what
    to change."""


class RecoverElsewhere(Exception):
    """A restarted managed job's GPU cannot hold the run that earlier attempts trained elsewhere: exit 76."""


class Preempted(Exception):
    """Training stopped on SIGTERM (a spot preemption notice) after saving a checkpoint."""


class NoTrainingData(Exception):
    """What the model made of the data leaves nothing to train on (an on-policy round whose samples give no pair),
    found after the model was loaded: exit 65, with the settings that change it."""


class EndpointUnavailable(Exception):
    """A sampler or judge endpoint failed past its retries: exit 69; the round's finished requests are kept, so a
    run started again goes on from there."""
