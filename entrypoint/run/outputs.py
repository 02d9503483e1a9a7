"""The run directory: a contract that pipelines script against.

    <DPO_OUTPUT_DIR>/
      adapter/            PEFT adapter, processor files, model card (README.md)
      merged/             with DPO_MERGE=1: the adapter merged into the base, a plain bf16 model (training/merge.py)
      metrics.json        train and eval metrics, sample generations
      config.json         the resolved settings, secrets redacted
      data_report.json    rows read, pairs made, rows dropped and why
      plots/              loss, reward accuracy, reward margin, chosen vs rejected rewards (PNG)
      samples/            the images of the sample generations in metrics.json (JPEG)
      rounds/<r>/         DPO_ROUNDS: each round's samples.jsonl and pairs.jsonl, images of its example pairs
      report.html         one self-contained page: settings, data, curves, base vs tuned, samples
      manifest.json       written last: every other file's path, size and sha256, and what made the run
                          ("provenance": base model, data, code, environment; the run record, record.py)

A reader that finds manifest.json can trust that the run is complete. Checkpoints and caches are
working state, not results: they are never listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
METRICS = "metrics.json"
CONFIG = "config.json"
DATA_REPORT = "data_report.json"
MANIFEST = "manifest.json"
PLOTS_DIR = "plots"
SAMPLES_DIR = "samples"
REPORT = "report.html"
# The trainer pickles its arguments (hub_token included) next to the adapter; results never carry them.
UNPUBLISHED_FILES = ("training_args.bin",)


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(data, tmp, indent=2, sort_keys=False, default=str)
        tmp.write("\n")
    os.replace(tmp.name, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def result_files(run_dir: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Every file of the run's results, sorted; working state under `exclude` is left out."""
    excluded = [p.resolve() for p in exclude]
    files = []
    for path in sorted(run_dir.rglob("*")):
        resolved = path.resolve()
        if not path.is_file() or path.name == MANIFEST or path.name.startswith("."):
            continue
        if any(resolved.is_relative_to(e) for e in excluded):
            continue
        files.append(path)
    return files


def write_manifest(run_dir: Path, run_name: str, exclude: tuple[Path, ...] = (),
                   record: dict[str, Any] | None = None) -> dict[str, Any]:
    """`record`: what made the run (the run record, record.py), under the key "provenance" when given."""
    files = [{"path": p.relative_to(run_dir).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in result_files(run_dir, exclude)]
    manifest = {"run_name": run_name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **({"provenance": record} if record is not None else {}), "files": files}
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def remove_unpublished(adapter_dir: Path) -> None:
    for name in UNPUBLISHED_FILES:
        (adapter_dir / name).unlink(missing_ok=True)


def check_writable(directory: Path, setting: str) -> None:
    """The job can create and write `directory` (the folder itself, or the nearest one above it that exists).

    A container runs as uid 1000: a volume mounted from a folder only root may write would otherwise end the
    run at its first save, after the model was loaded. Nothing is created here, so a dry run leaves no trace.
    """
    uid = os.getuid()
    fix = (f"make it writable by that user (e.g. `chown -R {uid} <the host folder>` for a volume), run the "
           f"container as the folder's owner (`docker run --user <uid>`), or set {setting} to a writable folder")
    existing = directory
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except PermissionError:  # a folder above it the job may not even look into
        raise ConfigError(f"{setting}={directory}: {existing.parent} is not readable by the job (uid {uid}); "
                          f"{fix}") from None
    if not existing.is_dir():
        raise ConfigError(f"{setting}={directory}: {existing} is a file, not a folder; point {setting} at a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}={directory}: {existing} is not writable by the job (uid {uid}); {fix}")
