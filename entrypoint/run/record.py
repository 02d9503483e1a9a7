"""The run record, what made a run: manifest.json's "provenance", a subset in the model card's metadata, and
wandb's config.

    model        the id as given; a Hub model's commit, or a hash of a local, `tiny:` or `shapes:` model's files
    dataset      the reference as given; a Hub dataset's commit, the sha256 of each local file or each s3://
                 object's ETag and size; and a fingerprint of the prepared train and eval pairs
    code         the project's version and git commit, the sha256 of requirements.lock, the ML packages' versions
    environment  the container image's digest (DPO_IMAGE_DIGEST), GPUs, CUDA and driver, world size
    settings     the seed; every resolved setting and the resolved DPOConfig are in config.json

`python -m entrypoint --from-run <run>` (rerun.py) runs it again from this record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from entrypoint.machine import driver_version
from entrypoint.remote import hub
from entrypoint.remote.refs import is_hub_model
from entrypoint.run.outputs import CONFIG, sha256_file

log = logging.getLogger("entrypoint.provenance")  # the name the log has always shown

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # entrypoint/
PROJECT_ROOT = PACKAGE_DIR.parent  # a checkout; site-packages where the package is installed (the image)
LOCK = "requirements.lock"
# Import name -> distribution name: the packages whose versions decide what a run computes.
PACKAGES = {"torch": "torch", "transformers": "transformers", "trl": "trl", "peft": "peft", "datasets": "datasets",
            "bitsandbytes": "bitsandbytes", "accelerate": "accelerate"}
FULL_HASH_MAX_BYTES = 2**30  # a model directory up to 1 GiB is hashed whole; above it, weight files are sampled
SAMPLE_BYTES = 2**20  # ... 1 MiB at the start, middle and end of each weight file
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
FINGERPRINT_BATCH = 256  # pairs read from Arrow at a time


# ---- the base model

def directory_content(root: Path) -> dict[str, Any]:
    """A hash of a model directory's files: each file's relative path, size and sha256, in path order.

    Cheap enough for any size: up to FULL_HASH_MAX_BYTES every file is hashed whole (a `tiny:` model, ~1 MB,
    takes milliseconds). Above it (a 15 GB local checkpoint, which would take a minute to read), config,
    tokenizer and processor files are still hashed whole but each weight file by its size and 1 MiB read at
    its start, middle and end: a changed, retrained or truncated checkpoint changes those, and unlike a hash
    of modification times it survives a copy to another machine, so a rerun there does not see drift that is
    not there. `hashed` says which was done."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(root).parts))
    total = sum(p.stat().st_size for p in files)
    whole = total <= FULL_HASH_MAX_BYTES
    digest = hashlib.sha256()
    for path in files:
        sampled = not whole and path.name.endswith(WEIGHT_SUFFIXES)
        file_hash = _sampled_sha256(path) if sampled else sha256_file(path)
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0{file_hash}\n".encode())
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total,
            "hashed": "every file whole" if whole else "weights sampled (size + 3 x 1 MiB), other files whole"}


def _sampled_sha256(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in (0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def snapshot_commit(path: Path | None) -> str | None:
    """The commit of a file huggingface_hub downloaded: its cache path is `.../snapshots/<commit>/<file>`."""
    if path is not None and path.parent.parent.name == "snapshots":
        return path.parent.name
    return None


def hub_commit(repo_type: str, repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub revision (None: the default branch) points to: asked of the Hub, or read from the local
    cache's refs when offline. None when neither knows."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.file_download import repo_folder_name

    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    if not hub.offline():
        try:
            api = HfApi(token=hub.token())
            info = api.model_info if repo_type == "model" else api.dataset_info
            return info(repo_id, revision=revision).sha
        except Exception as exc:  # noqa: BLE001 - no network, gated: the cache may still know
            log.debug("cannot ask the Hub for %s's commit: %s", repo_id, exc)
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "refs" / (
        revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def model_record(ref: str, revision: str | None, model: Any) -> dict[str, Any]:
    """The base model as given (DPO_MODEL, DPO_MODEL_REVISION) and exactly what that was: a Hub model's commit (of
    the config.json resolve_model fetched, so no second request), or a hash of a directory's files."""
    out: dict[str, Any] = {"id": ref, "revision": revision}
    if is_hub_model(ref):
        out["commit"] = snapshot_commit(model.config_file) or hub_commit("model", ref, revision)
    else:
        out["content"] = directory_content(Path(model.source))
    if model.stands_for:
        out["stands_for"] = model.stands_for
    return out


# ---- the data

def source_files(local: Path, split: str) -> list[dict[str, Any]]:
    """The local files a split was read from, each with its path (relative to the data folder), size and sha256."""
    from entrypoint.data.sources import split_files

    root = local if local.is_dir() else local.parent
    return [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in split_files(local, split)]


def s3_objects(uri: str) -> list[dict[str, Any]]:
    """Each object an s3:// data reference means (s3.data_objects: the key itself, or the folder under it), with
    its size and ETag, from the listing that decides which objects those are."""
    from entrypoint.remote import s3

    return [{"key": key, "size": size, "etag": etag} for key, size, etag in s3.data_objects(uri)[1]]


def pairs_fingerprint(pairs: Any) -> dict[str, Any] | None:
    """sha256 over the pairs in the order they are trained: each pair's prompt, chosen and rejected messages (as
    canonical JSON) and its images' stored bytes (as prepared, never decoded or re-encoded), each part
    length-prefixed so that no two different pair sets hash alike. Reads Arrow batches: no image is decoded."""
    if pairs is None:
        return None
    digest = hashlib.sha256()
    for batch in pairs.with_format("arrow").iter(batch_size=FINGERPRINT_BATCH):
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
        images = columns.pop("images", None)
        for row in range(batch.num_rows):
            _add(digest, json.dumps({name: values[row] for name, values in columns.items()}, sort_keys=True,
                                    ensure_ascii=False, separators=(",", ":")).encode())
            for image in (images[row] or []) if images else []:
                _add(digest, _image_bytes(image))
    return {"pairs": len(pairs), "sha256": digest.hexdigest()}


def _add(digest: Any, part: bytes) -> None:
    digest.update(len(part).to_bytes(8, "little"))
    digest.update(part)


def _image_bytes(image: Any) -> bytes:
    """What datasets stores for an image: its bytes, or (never for prepared pairs) a path to them."""
    if isinstance(image, dict) and image.get("bytes") is not None:
        return image["bytes"]
    if isinstance(image, dict) and image.get("path"):
        return Path(image["path"]).read_bytes()
    return b""


def dataset_record(ref: str, split: str, revision: str | None, cache_dir: Path, data: Any) -> dict[str, Any]:
    """The data as given (DPO_DATASET, DPO_DATASET_SPLIT, DPO_DATASET_REVISION), what it was (a Hub commit, local
    files' sha256, s3 objects' ETags), and fingerprints of the prepared train and eval pairs (the eval pairs are
    DPO_EVAL_DATASET's when it is set)."""
    out = source_record(ref, split, revision, cache_dir)
    started = time.perf_counter()
    out["train"], out["eval"] = pairs_fingerprint(data.train), pairs_fingerprint(data.eval)
    log.info("fingerprinted %d prepared pairs in %.2f s (manifest.json's provenance)",
             len(data.train) + len(data.eval or ()), time.perf_counter() - started)
    return out


def source_record(ref: str, split: str, revision: str | None, cache_dir: Path) -> dict[str, Any]:
    """A dataset as given (reference, split, revision) and what it was: a Hub commit, local files' sha256, or s3
    objects' ETags."""
    from entrypoint.data.sources import local_path

    out: dict[str, Any] = {"id": ref, "split": split, "revision": revision}
    if ref.startswith("s3://"):
        out["objects"] = s3_objects(ref)
    else:
        local = local_path(ref, cache_dir)
        if local is None:
            out["commit"] = hub_commit("dataset", ref, revision)
        else:
            out["files"] = source_files(local, split)
    return out


# ---- the code and where it ran

def git_commit(root: Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout the code runs from; (None, None) outside one. `dirty`: files changed
    or added since that commit, so the commit alone does not say what ran. Read-only (no index lock taken)."""
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def project_version(root: Path = PROJECT_ROOT) -> str | None:
    """pyproject.toml's version beside the code (a checkout, the image's /app), else the installed package's."""
    import tomllib

    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        return tomllib.loads(pyproject.read_text()).get("project", {}).get("version")
    try:
        return metadata.version("dpo-job")
    except metadata.PackageNotFoundError:
        return None


def lock_file(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """requirements.lock's sha256: a checkout's, beside the code; in an installed package (the image), the copy the
    image puts inside the package (Dockerfile), PROJECT_ROOT being site-packages there."""
    for lock in (root / LOCK, PACKAGE_DIR / LOCK):
        if lock.is_file():
            return {"path": LOCK, "sha256": sha256_file(lock)}
    return {"path": LOCK, "sha256": None, "reason": f"no {LOCK} beside the code in {root} or in {PACKAGE_DIR}"}


def package_versions() -> dict[str, str | None]:
    """Each package's imported module's `__version__`; for one not imported yet in this process (peft and
    bitsandbytes load with the model), the installed distribution's; None when not installed."""
    out: dict[str, str | None] = {}
    for module, dist in PACKAGES.items():
        version = getattr(sys.modules.get(module), "__version__", None)
        if version is None:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = None
        out[module] = str(version) if version is not None else None
    return out


def code_record(code_revision: str | None = None) -> dict[str, Any]:
    """The code: version, commit (from the git checkout, else DPO_CODE_REVISION, which the image sets at build
    time), the lock, the packages."""
    commit, dirty = git_commit()
    source = "git" if commit else None
    if commit is None and code_revision and code_revision != "unknown":
        commit, source = code_revision, "DPO_CODE_REVISION"
    return {"version": project_version(), "commit": commit, "commit_from": source, "dirty": dirty,
            "requirements_lock": lock_file(), "python": platform.python_version(), "packages": package_versions()}


def environment_record(world_size: int, image_digest: str | None = None) -> dict[str, Any]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"image_digest": image_digest, "world_size": world_size, "gpu_count": len(gpus), "gpus": gpus,
            "cuda": torch.version.cuda, "driver": driver_version() if gpus else None,
            "platform": platform.platform()}


# ---- the whole record

def run_record(settings: Any, model: Any, data: Any, cache_dir: Path, world_size: int) -> dict[str, Any]:
    """manifest.json's "provenance" for this run (every rank computes the same; rank 0 writes it)."""
    return {
        "model": model_record(settings.model, settings.model_revision, model),
        "dataset": dataset_record(settings.dataset, settings.dataset_split, settings.dataset_revision,
                                      cache_dir, data),
        **({"eval_dataset": source_record(settings.eval_dataset, settings.eval_dataset_split,
                                          settings.eval_dataset_revision, cache_dir)}
           if settings.eval_dataset else {}),
        "code": code_record(settings.code_revision),
        "environment": environment_record(world_size, settings.image_digest),
        "settings": {"seed": settings.seed, "config": CONFIG, "dpo_config": f"{CONFIG}: dpo_config"},
    }


def card_subset(record: dict[str, Any]) -> dict[str, Any]:
    """The model card's compact `provenance` metadata: enough to tell which base, data and code made it."""
    model, data, code = record["model"], record["dataset"], record["code"]
    out = {"base_model": model["id"],
           "base_model_revision": model.get("commit") or f"sha256:{model['content']['sha256']}",
           "dataset": data["id"]}
    if data.get("commit"):
        out["dataset_revision"] = data["commit"]
    out["train_pairs_sha256"] = data["train"]["sha256"]
    if data.get("eval"):
        out["eval_pairs_sha256"] = data["eval"]["sha256"]
    if record.get("eval_dataset"):
        out["eval_dataset"] = record["eval_dataset"]["id"]
        if record["eval_dataset"].get("commit"):
            out["eval_dataset_revision"] = record["eval_dataset"]["commit"]
    out["code_version"] = code["version"]
    out["code_commit"] = code["commit"]
    if record["environment"].get("image_digest"):
        out["image_digest"] = record["environment"]["image_digest"]
    return out
