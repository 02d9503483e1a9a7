"""A round's work done prompt by prompt, kept as it is done: JSON lines appended to a file and flushed to disk, one a
prompt, so a run killed while sampling from an endpoint or judging goes on from the next prompt and never pays for
a request twice (onpolicy/rounds.py).

A line cut off by the kill (the last one, without its newline) is dropped on reading: that prompt is done again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    """`path`'s records by prompt index; `add` appends one and syncs it (safe from several threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[int, Any] = {}
        self._lock = threading.Lock()
        if path.is_file():
            text = path.read_text()
            complete = text[:text.rfind("\n") + 1]  # what follows the last newline was cut off mid-write
            for line in complete.splitlines():
                entry = json.loads(line)
                self.done[entry["prompt"]] = entry["record"]
            if len(complete) < len(text):
                path.write_text(complete)

    def add(self, prompt: int, record: Any) -> None:
        line = json.dumps({"prompt": prompt, "record": record}) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as file:
                file.write(line)
                file.flush()
                os.fsync(file.fileno())
            self.done[prompt] = record
