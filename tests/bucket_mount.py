"""A bucket mounted on several nodes, as SkyPilot's `MOUNT_CACHED` behaves: each node reads and writes its own copy
(a folder here); what a node writes reaches the bucket `lag_s` after its last change, and the other nodes' copies
`lag_s` after that; deletions travel the same way. A fresh mount shows what the bucket holds at once.

Files are copied whole and renamed into place (the bucket's objects are atomic: a node sees a file complete or not
at all), through a scratch folder outside every copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

Stat = tuple[int, int]  # size, mtime_ns


def _scan(root: Path) -> dict[str, Stat]:
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed while scanning
                continue
            found[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


class LaggingMount:
    def __init__(self, bucket: Path, views: list[Path], lag_s: float = 3.0, tick_s: float = 0.1):
        self.bucket, self.views, self.lag_s, self.tick_s = bucket, views, lag_s, tick_s
        self.scratch = Path(tempfile.mkdtemp(prefix="mount-scratch-", dir=bucket.parent))
        self.version: dict[str, tuple[int, float]] = {}  # bucket path -> (version, when it landed)
        self.deleted: dict[str, float] = {}  # bucket path -> when it was deleted there
        self.synced: list[dict[str, tuple[int, Stat]]] = [{} for _ in views]  # per copy: path -> (version, stat)
        self.changed: list[dict[str, tuple[Stat | None, float]]] = [{} for _ in views]  # local change, first seen
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LaggingMount:
        self.bucket.mkdir(parents=True, exist_ok=True)
        for view in self.views:  # a fresh mount lists the bucket as it is
            view.mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        for rel, _ in _scan(self.bucket).items():
            self._count += 1
            self.version[rel] = (self._count, now - self.lag_s)
            for i, view in enumerate(self.views):
                self.synced[i][rel] = (self._count, self._copy(self.bucket / rel, view / rel))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def settle(self) -> None:
        """Wait until every write has reached the bucket and every copy (what a job's end flushes)."""
        deadline = time.monotonic() + 20 * self.lag_s + 10
        while time.monotonic() < deadline:
            if all(not changed for changed in self.changed) and all(
                    {rel: v for rel, (v, _) in synced.items()} == {rel: v for rel, (v, _) in self.version.items()}
                    for synced in self.synced):
                return
            time.sleep(self.tick_s)
        raise TimeoutError("the mount did not settle")

    def _copy(self, source: Path, target: Path) -> Stat:
        fd, tmp = tempfile.mkstemp(dir=self.scratch)
        os.close(fd)
        shutil.copyfile(source, tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        stat = target.stat()
        return stat.st_size, stat.st_mtime_ns

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self._tick(time.monotonic())
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                pass  # a file went away mid-copy: the next tick sees that

    def _tick(self, now: float) -> None:
        for i, view in enumerate(self.views):
            self._upload(i, view, now)
        for i, view in enumerate(self.views):
            self._download(i, view, now)

    def _upload(self, i: int, view: Path, now: float) -> None:
        current, synced, changed = _scan(view), self.synced[i], self.changed[i]
        for rel in set(current) | set(synced):
            stat = current.get(rel)
            if stat == (synced[rel][1] if rel in synced else None):
                changed.pop(rel, None)
                continue
            if rel not in changed or changed[rel][0] != stat:
                changed[rel] = (stat, now)  # a new local change: its lag starts now
                continue
            if now - changed[rel][1] < self.lag_s:
                continue
            del changed[rel]
            if stat is None:  # deleted here: delete in the bucket, if it still holds what this copy had
                if rel in self.version and self.version[rel][0] == synced[rel][0]:
                    (self.bucket / rel).unlink(missing_ok=True)
                    del self.version[rel]
                    self.deleted[rel] = now
                del synced[rel]
            else:
                self._count += 1
                self._copy(view / rel, self.bucket / rel)
                self.version[rel] = (self._count, now)
                synced[rel] = (self._count, stat)

    def _download(self, i: int, view: Path, now: float) -> None:
        synced, changed = self.synced[i], self.changed[i]
        for rel, (version, landed) in list(self.version.items()):
            if rel in changed or synced.get(rel, (None,))[0] == version or now - landed < self.lag_s:
                continue
            synced[rel] = (version, self._copy(self.bucket / rel, view / rel))
        for rel in [rel for rel in synced if rel not in self.version and rel not in changed]:
            if now - self.deleted.get(rel, now - self.lag_s) < self.lag_s:
                continue
            (view / rel).unlink(missing_ok=True)
            del synced[rel]
            parent = (view / rel).parent
            while parent != view and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
