"""Checkpoints that survive preemption: complete-or-ignored, resumable, pruned safely.

The Trainer writes a checkpoint as many files, one after the other; a process killed halfway
leaves a folder that looks like a checkpoint but is not one. So after the Trainer has written
everything, `CheckpointCallback` (training/callbacks.py) adds `dpo_checkpoint.json` listing every file and its
size.
A checkpoint is complete when that marker exists and every size matches: on a bucket mount a file
can also be cut short by an interrupted upload, and the sizes catch that too.

Several ranks, several nodes: each rank writes its own files (its RNG state; optimizer shards under FSDP), and on a
bucket mount each node sees the others' writes late. So the marker lists the files of every rank's view
(`seal(views=...)`, collected after every rank has written), and a node whose copy lags sees the checkpoint
incomplete until it has caught up.

Pruning is done here, not by the Trainer (`save_total_limit` is taken over), because the Trainer
counts half-written folders and could delete the last good checkpoint in their favour. It never deletes the newest
checkpoint before the one just saved that every rank's view shows complete (`confirmed`): the one just saved may
still sit in this node's cache of the bucket, and a preemption now would leave it half uploaded.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from entrypoint.run import peers
from entrypoint.run.outputs import UNPUBLISHED_FILES, remove_unpublished

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


def marker(checkpoint: Path) -> dict | None:
    """The completeness marker (None: none, or cut off)."""
    try:
        return json.loads((checkpoint / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(checkpoint: Path) -> bool:
    listed = (marker(checkpoint) or {}).get("files")
    if not isinstance(listed, dict):
        return False
    return all((checkpoint / name).is_file() and (checkpoint / name).stat().st_size == size
               for name, size in listed.items())


def files(checkpoint: Path) -> dict[str, int]:
    """The files this process sees in `checkpoint` (the marker aside), with their sizes."""
    if not checkpoint.is_dir():
        return {}
    return {p.relative_to(checkpoint).as_posix(): p.stat().st_size
            for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}


def complete_names(root: Path) -> set[str]:
    """The checkpoints this process sees complete, by name."""
    return {path.name for path in checkpoint_dirs(root) if is_complete(path)}


def view(root: Path, checkpoint: Path, keep: int | None) -> tuple[dict[str, int], set[str]]:
    """What this process sees for `seal`: the new checkpoint's files, and the complete checkpoints when pruning needs
    them (`keep`: reading every marker of an unpruned bucket at every save would grow with the run)."""
    return files(checkpoint), complete_names(root) if keep else set()


def mark_complete(checkpoint: Path, views: list[dict[str, int]] | None = None,
                  note: dict[str, str] | None = None) -> None:
    """Write the marker: every file this process sees, and those the other ranks saw (`views`) that it does not yet
    (their own writes, still on their way through the bucket); `note`: more to record (what tells this copy from an
    earlier one)."""
    listed = files(checkpoint)
    for view in views or ():
        for name, size in view.items():
            listed.setdefault(name, size)
    tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
    content = {"step": _step(checkpoint), **(note or {}), "files": dict(sorted(listed.items()))}
    tmp.write_text(json.dumps(content, indent=1))
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


def prune(root: Path, keep: int | None, protected: Path | None, confirmed: Path | None = None) -> None:
    """Keep the newest `keep` complete checkpoints; never delete `protected` (the resume source), `confirmed` (the
    newest one every rank's view shows complete, before the one just saved) or anything newer than it."""
    if not keep:
        return
    complete = [c for c in checkpoint_dirs(root) if is_complete(c)]
    spared = {p.resolve() for p in (protected, confirmed) if p is not None}
    for checkpoint in complete[:-keep]:
        if checkpoint.resolve() not in spared and (confirmed is None or _step(checkpoint) < _step(confirmed)):
            shutil.rmtree(checkpoint, ignore_errors=True)


def confirmed_before(root: Path, step: int, seen_complete: list[set[str]]) -> Path | None:
    """The newest checkpoint before `step` that every view in `seen_complete` (each rank's complete names) shows."""
    common = set.intersection(*seen_complete) if seen_complete else set()
    earlier = [c for c in checkpoint_dirs(root) if _step(c) < step and c.name in common]
    return earlier[-1] if earlier else None


def seal(root: Path, step: int, keep: int | None, protected: Path | None,
         views: list[tuple[dict[str, int], set[str]]] | None = None) -> Path:
    """After the Trainer saved step `step` (on every rank): drop what must not be kept (pickled arguments carry
    hub_token, and resuming does not need them), mark the checkpoint complete with every rank's files, prune.
    `views`: each rank's (files of this checkpoint, complete checkpoints it sees); None: this process alone.
    Returns the checkpoint."""
    checkpoint = root / f"checkpoint-{step}"
    remove_unpublished(checkpoint)
    views = views or [view(root, checkpoint, keep)]
    mark_complete(checkpoint, [{name: size for name, size in view.items() if Path(name).name not in UNPUBLISHED_FILES}
                               for view, _ in views])
    prune(root, keep, protected, confirmed_before(root, step, [seen for _, seen in views]))
    return checkpoint


def agreed_resume_point(root: Path, is_main: bool) -> Path | None:
    """The newest complete checkpoint in `root` (None: start from step 0) as rank 0 sees it, after removing half-written
    ones; every rank resumes from that one, once its own copy of the checkpoint dir shows it complete (run/peers.py)."""
    chosen = None
    if is_main:
        remove_incomplete(root)
        chosen = latest_complete(root)
    name = peers.from_rank_0(chosen.name if chosen else None)
    if name is None:
        return None
    checkpoint = root / name
    peers.wait_until_visible(f"checkpoint {checkpoint}", lambda: is_complete(checkpoint))
    return checkpoint
