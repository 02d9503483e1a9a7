"""What a model or data reference string means, before anything is read: a local path, a Hub id, `s3://`, or one of
the job's own stand-ins (`sample:<name>` data, `tiny:<family>` and `shapes:<family>` models, built offline)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_PREFIX = "sample:"  # generated rows in a real dataset's schema (data/samples.py)
TINY_PREFIX = "tiny:"  # a tiny randomly initialised model (models/tiny.py)
SHAPES_PREFIX = "shapes:"  # the published checkpoint's geometry at narrow widths (models/shapes.py)
S3_PREFIX = "s3://"


def looks_local(ref: str) -> bool:
    """Paths are absolute, explicitly relative, or exist; anything else of the form org/name is a Hub id."""
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()


def is_built_offline(ref: str) -> bool:
    """A `tiny:` or `shapes:` model, which the job builds itself."""
    return ref.startswith((TINY_PREFIX, SHAPES_PREFIX))


def is_hub_model(ref: str) -> bool:
    """A model the Hub holds: neither built offline nor a local directory."""
    return not is_built_offline(ref) and not looks_local(ref)


def is_read_whole(ref: str) -> bool:
    """Data that even a dry run reads whole: generated samples, local files, s3:// (downloaded first)."""
    return ref.startswith((SAMPLE_PREFIX, S3_PREFIX)) or looks_local(ref)
