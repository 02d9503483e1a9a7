"""Where rows come from: `sample:<name>`, a local file or directory, `s3://`, or a Hub dataset id.

`check_source` is the cheap pre-flight (no download) run before any model is loaded;
`load_rows` returns the raw rows as a `datasets.Dataset`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.remote import hub
from entrypoint.remote.refs import SAMPLE_PREFIX, looks_local

_LOADERS_BY_SUFFIX = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_source(ref: str, revision: str | None = None, setting: str = "DPO_DATASET") -> None:
    """Fail fast, naming the problem, for a dataset reference that cannot work (`revision`: a Hub dataset's,
    DPO_DATASET_REVISION; `setting`: the one the reference is given by, DPO_DATASET or DPO_EVAL_DATASET)."""
    if ref.startswith(SAMPLE_PREFIX):
        from entrypoint.data.samples import SAMPLES

        if ref[len(SAMPLE_PREFIX):] not in SAMPLES:
            raise ConfigError(f"{setting}={ref!r}: unknown sample; samples: {', '.join(SAMPLES)}")
    elif ref.startswith("s3://"):
        from entrypoint.remote import s3

        s3.data_objects(ref, first_only=True)  # what the download will fetch: an exact key, or a folder
    elif looks_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise ConfigError(f"{setting}={ref}: no such file or directory")
        if path.is_file() and path.suffix not in _LOADERS_BY_SUFFIX:
            raise ConfigError(f"{setting}={ref}: unsupported file type; use {', '.join(_LOADERS_BY_SUFFIX)}")
    elif not _HUB_ID.match(ref):
        raise ConfigError(f"{setting}={ref!r}: neither a Hub dataset id, an s3:// URI, a path nor a sample")
    else:
        _check_hub_dataset(ref, revision, setting)


def check_image_dir(image_dir: Path | None) -> None:
    if image_dir is not None and not image_dir.expanduser().is_dir():
        raise ConfigError(f"DPO_IMAGE_DIR={image_dir}: no such folder; give the folder the data's image paths are "
                          "relative to, or leave it unset to use the data file's folder")


def _check_hub_dataset(ref: str, revision: str | None = None, setting: str = "DPO_DATASET") -> None:
    """A typo'd or gated dataset id fails here, not after the processor is loaded. Offline
    (HF_HUB_OFFLINE=1) the Hub cannot be asked: a cached copy may still load."""
    from huggingface_hub import HfApi

    if hub.offline():
        return
    try:
        HfApi(token=hub.token()).dataset_info(ref, revision=revision)
    except Exception as exc:  # noqa: BLE001 - not found, gated, no network: the user's to fix
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        at = f" at {setting}_REVISION={revision}" if revision else ""
        raise ConfigError(f"{setting}={ref}: cannot read it from the Hub{at} ({type(exc).__name__}: "
                          f"{first_line})") from None


def _split_files(path: Path, split: str) -> dict[str, list[Path]]:
    """Data files by split, named as `datasets` names them: a single file is `train`; in a folder, by file
    or folder name (`train-00000.parquet`, `test.jsonl`, `validation/...`), and all of it `train` when no
    name says otherwise."""
    if path.is_file():
        return {"train": [path]}
    from datasets.data_files import DataFilesDict, get_data_patterns
    from datasets.exceptions import DataFilesNotFoundError

    try:
        resolved = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except (DataFilesNotFoundError, FileNotFoundError):
        resolved = {}
    found = {str(name): sorted(Path(f) for f in files if Path(f).suffix in _LOADERS_BY_SUFFIX)
             for name, files in resolved.items()}
    return {name: files for name, files in found.items() if files}


def _data_files(path: Path, split: str, setting: str = "DPO_DATASET") -> tuple[str, list[str]]:
    """The builder and files of one split (`train`, or with datasets' slicing, `train[:1000]`)."""
    by_split = _split_files(path, split)
    if not by_split:
        raise ConfigError(f"{path}: no {'/'.join(_LOADERS_BY_SUFFIX)} files found")
    name = split.split("[", 1)[0]
    if name not in by_split:
        raise ConfigError(f"{setting}_SPLIT={split}: {path} has the split(s) {', '.join(sorted(by_split))} (named "
                          f"by file or folder, e.g. {name}-00000.parquet or {name}/); set one of them")
    files = by_split[name]
    suffixes = {p.suffix for p in files}
    if len({_LOADERS_BY_SUFFIX[s] for s in suffixes}) > 1:
        raise ConfigError(f"{path}: mixed file types {sorted(suffixes)}; keep one kind per dataset")
    return _LOADERS_BY_SUFFIX[files[0].suffix], [str(p) for p in files]


def split_files(path: Path, split: str) -> list[Path]:
    """The files a local dataset's split is read from: the file itself, the split's data files in a folder, or every
    file of a folder `datasets.save_to_disk` wrote."""
    if path.is_file():
        return [path]
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [Path(f) for f in _data_files(path, split)[1]]


def _load_local(path: Path, split: str, setting: str = "DPO_DATASET") -> Any:
    import datasets

    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if not isinstance(loaded, datasets.DatasetDict):
            return loaded
        if split not in loaded:
            raise ConfigError(f"{setting}_SPLIT={split}: {path} has the split(s) {', '.join(sorted(loaded))}")
        return loaded[split]
    builder, files = _data_files(path, split, setting)
    try:
        return datasets.load_dataset(builder, data_files={split.split("[", 1)[0]: files}, split=split)
    except Exception as exc:  # noqa: BLE001 - a file datasets cannot parse: the user's to fix
        cause = exc.__cause__ or exc  # datasets wraps the parser's error
        if isinstance(cause, StopIteration) or "corresponds to no data" in str(cause):  # how datasets says "empty"
            raise ConfigError(f"{path}: no rows") from None
        first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f"{path}: cannot read it as {builder} ({first_line}); every row must have the same "
                          "columns, each holding one type") from None


def local_path(ref: str, cache_dir: Path) -> Path | None:
    """The local file or directory a `sample:`, `s3://` or local dataset is read from (an s3:// one is
    downloaded first); None for a Hub dataset. Relative image paths in the data resolve against it."""
    if ref.startswith(SAMPLE_PREFIX):
        from entrypoint.data.samples import write_sample

        return write_sample(ref[len(SAMPLE_PREFIX):], cache_dir / "samples")
    if ref.startswith("s3://"):
        from entrypoint.remote import s3

        return s3.download(ref, cache_dir / "s3")
    if looks_local(ref):
        return Path(ref).expanduser()
    return None


def image_root(local: Path | None) -> Path | None:
    """Where image paths relative to the data point: beside a data file, or inside a data directory."""
    if local is None:
        return None
    return local if local.is_dir() else local.parent


def load_rows(ref: str, split: str, cache_dir: Path, limit: int | None = None, local: Path | None = None,
              revision: str | None = None, setting: str = "DPO_DATASET") -> Any:
    """The raw rows as a `datasets.Dataset` (images decoded lazily by `datasets`).

    `limit`: a Hub dataset is streamed and only its first `limit` rows are read (a dry run's sample,
    without downloading the whole set); local files are read whole either way. `local`: what
    `local_path(ref, cache_dir)` returned, when the caller already has it. `revision`: a Hub dataset's branch, tag
    or commit (DPO_DATASET_REVISION; `--from-run` pins the recorded commit). `setting`: the setting that names the
    data (DPO_DATASET or DPO_EVAL_DATASET), in errors.
    """
    import datasets

    local = local or local_path(ref, cache_dir)
    if local is not None:
        return _load_local(local, split, setting)
    try:
        if limit:
            stream = datasets.load_dataset(ref, split=split, revision=revision, token=hub.token(),
                                           streaming=True)
            return datasets.Dataset.from_list(list(stream.take(limit)), features=stream.features)
        return datasets.load_dataset(ref, split=split, revision=revision, token=hub.token())
    except (OSError, ValueError) as exc:  # not found, no such split, offline and not cached
        raise ConfigError(f"{setting}={ref}: {str(exc).splitlines()[0]}") from None
