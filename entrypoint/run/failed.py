"""A failure retrying cannot fix (exit 3: out of GPU memory, after minutes of loading), kept beside the checkpoints
for SkyPilot's restarts of the same managed job.

SkyPilot restarts every non-zero exit up to `max_restarts_on_errors` (sky/jobs/recovery_strategy.py,
`should_restart_on_failure`: only `recover_on_exit_codes` are exempt from the count, none are never retried), so a
run that ran out of memory would load a 7B model three more times to run out of memory again. Rank 0 records the
failure with the managed job's id (SKYPILOT_TASK_ID, the same on every restart of one `sky jobs launch`); a restart
that finds its own job's failure exits at once with the same code and message. A new launch has a new id and runs;
outside SkyPilot nothing is recorded. A bad setting (exit 2) is not recorded: it is found in seconds, before any
model is loaded, and some of its causes (the Hub or S3 out of reach) pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entrypoint.run.outputs import write_json

FAILED = "failed.json"
TASK_ID = "SKYPILOT_TASK_ID"


def record_failure(checkpoint_dir: Path, code: int, message: str, environ: Mapping[str, str] = os.environ) -> None:
    """Rank 0 of a managed job: the failure, for its restarts. Best effort: a folder it cannot write changes
    nothing (that may be the failure itself)."""
    task = environ.get(TASK_ID)
    if not task or environ.get("RANK", "0") != "0":
        return
    try:
        write_json(checkpoint_dir / FAILED, {"task_id": task, "exit_code": code, "message": message})
    except OSError:
        pass


def earlier_failure(checkpoint_dir: Path, environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The failure an earlier attempt of this managed job recorded ({"exit_code", "message"}), else None."""
    task = environ.get(TASK_ID)
    try:
        recorded = json.loads((checkpoint_dir / FAILED).read_text())
    except (OSError, ValueError):
        return None
    return recorded if task and isinstance(recorded, dict) and recorded.get("task_id") == task else None
