"""Checkpoints that survive preemption: complete-or-ignored, resumable, pruned safely.

The Trainer writes a checkpoint as many files, one after the other; a process killed halfway
leaves a folder that looks like a checkpoint but is not one. So after the Trainer has written
everything, `CheckpointCallback` (training/callbacks.py) adds `dpo_checkpoint.json` listing every file and its
size.
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
from pathlib import Path

from entrypoint.run.outputs import remove_unpublished

log = logging.getLogger("entrypoint.checkpoints")

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


def seal(root: Path, step: int, keep: int | None, protected: Path | None) -> Path:
    """After the Trainer saved step `step`: drop what must not be kept (pickled arguments carry hub_token, and
    resuming does not need them), mark the checkpoint complete, prune. Returns the checkpoint."""
    checkpoint = root / f"checkpoint-{step}"
    remove_unpublished(checkpoint)
    mark_complete(checkpoint)
    prune(root, keep, protected)
    return checkpoint
