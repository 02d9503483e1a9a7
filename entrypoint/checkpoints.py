"""Checkpoints that survive preemption: complete-or-ignored, resumable, pruned safely, saved on SIGTERM.

The Trainer writes a checkpoint as many files, one after the other; a process killed halfway
leaves a folder that looks like a checkpoint but is not one. So after the Trainer has written
everything, `CheckpointCallback` adds `dpo_checkpoint.json` listing every file and its size.
A checkpoint is complete when that marker exists and every size matches: on a bucket mount a file
can also be cut short by an interrupted upload, and the sizes catch that too.

Pruning is done here, not by the Trainer (`save_total_limit` is taken over), because the Trainer
counts half-written folders and could delete the last good checkpoint in their favour.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from entrypoint.outputs import remove_unpublished

log = logging.getLogger(__name__)

COMPLETE_MARKER = "dpo_checkpoint.json"  # written last into a checkpoint: it is complete
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _step(path: Path) -> int:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else -1


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint folders by step, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _step(p) >= 0), key=_step)


def is_complete(checkpoint: Path) -> bool:
    try:
        listed = json.loads((checkpoint / COMPLETE_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((checkpoint / name).is_file() and (checkpoint / name).stat().st_size == size
               for name, size in listed.items())


def mark_complete(checkpoint: Path) -> None:
    files = {p.relative_to(checkpoint).as_posix(): p.stat().st_size
             for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}
    tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps({"step": _step(checkpoint), "files": files}, indent=1))
    tmp.replace(checkpoint / COMPLETE_MARKER)


def latest_complete(root: Path) -> Path | None:
    """The newest complete checkpoint; incomplete newer ones are reported and skipped."""
    for checkpoint in reversed(checkpoint_dirs(root)):
        if is_complete(checkpoint):
            return checkpoint
        log.warning("skipping incomplete checkpoint %s (cut off while it was written)", checkpoint)
    return None


def remove_incomplete(root: Path) -> None:
    """Delete half-written checkpoints so the Trainer cannot mistake or re-number them."""
    for checkpoint in checkpoint_dirs(root):
        if not is_complete(checkpoint):
            shutil.rmtree(checkpoint, ignore_errors=True)


def prune(root: Path, keep: int | None, protected: Path | None) -> None:
    """Keep the newest `keep` complete checkpoints; never delete `protected` (the resume source)."""
    if not keep:
        return
    complete = [c for c in checkpoint_dirs(root) if is_complete(c)]
    for checkpoint in complete[:-keep]:
        if protected is None or checkpoint.resolve() != protected.resolve():
            shutil.rmtree(checkpoint, ignore_errors=True)


class CheckpointCallback(TrainerCallback):
    """Marks checkpoints complete, prunes, saves at the last step, and stops cleanly on SIGTERM.

    SIGTERM is what a spot VM (and SkyPilot) sends before taking the machine: the current step
    finishes, a checkpoint is saved, and training stops; `preempted` tells the caller to exit with
    the code the SkyPilot YAML recovers on.
    """

    def __init__(self, root: Path, keep: int | None, resumed_from: Path | None):
        self.root, self.keep, self.resumed_from = root, keep, resumed_from
        self.preempted = False
        self._previous_handler: Any = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: finishing this step, saving a checkpoint, then stopping")
        self.preempted = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        # A resumed TrainerState carries the logging, eval and save intervals of the run that saved it; this run's
        # settings apply instead (changing DPO_LOGGING_STEPS on a restart is accepted, so it must take effect).
        saved = {kind: getattr(state, f"{kind}_steps") for kind in ("logging", "eval", "save")}
        state.compute_steps(args, state.max_steps)
        changed = [f"{kind}_steps {was} -> {getattr(state, f'{kind}_steps')}" for kind, was in saved.items()
                   if was != getattr(state, f"{kind}_steps")]
        if state.global_step and changed:
            log.info("resumed with this run's intervals: %s", ", ".join(changed))

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.preempted:
            control.should_save = True
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            control.should_save = True  # a finished run resumes to "done" instead of repeating steps
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = self.root / f"checkpoint-{state.global_step}"
            remove_unpublished(checkpoint)  # pickled args carry hub_token; resuming does not need them
            mark_complete(checkpoint)
            prune(self.root, self.keep, self.resumed_from)
        return control
