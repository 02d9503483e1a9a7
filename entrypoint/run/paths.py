"""Where a run lives: its name, the run directory (outputs.py's contract), checkpoints and the cache."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from entrypoint.config.settings import JobSettings
from entrypoint.run import outputs


@dataclass(frozen=True)
class RunPaths:
    run_name: str
    output_dir: Path
    checkpoint_dir: Path
    cache_dir: Path

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / outputs.ADAPTER_DIR

    @property
    def merged_dir(self) -> Path:
        return self.output_dir / outputs.MERGED_DIR

    @property
    def manifest(self) -> Path:
        return self.output_dir / outputs.MANIFEST


def _slug(ref: str) -> str:
    tail = ref.rstrip("/").replace(":", "-").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.") or "run"


def run_paths(settings: JobSettings) -> RunPaths:
    """DPO_RUN_NAME (default: from the model and dataset), DPO_OUTPUT_DIR (outputs/<run name>), DPO_CHECKPOINT_DIR
    (<output dir>/checkpoints) and DPO_CACHE_DIR, resolved."""
    run_name = settings.run_name or f"{_slug(settings.model)}-{_slug(settings.dataset)}"[:96]
    output_dir = (settings.output_dir or Path("outputs") / run_name).expanduser().resolve()
    checkpoint_dir = (settings.checkpoint_dir or output_dir / "checkpoints").expanduser().resolve()
    return RunPaths(run_name, output_dir, checkpoint_dir, settings.cache_dir.expanduser().resolve())


def check_writable(paths: RunPaths) -> None:
    """Every folder the run writes can be created and written by the job (ConfigError naming the setting)."""
    outputs.check_writable(paths.output_dir, "DPO_OUTPUT_DIR")
    outputs.check_writable(paths.checkpoint_dir, "DPO_CHECKPOINT_DIR")
    outputs.check_writable(paths.cache_dir, "DPO_CACHE_DIR")
