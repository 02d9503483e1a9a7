"""S3 basics shared by data loading and publishing: URIs, the client, downloads.

Credentials and the endpoint come from the standard AWS chain (`AWS_*` variables, profiles,
instance roles); `AWS_ENDPOINT_URL_S3` points it at R2, MinIO or GCS's S3 interface.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from entrypoint.errors import ConfigError


def parse_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r}: no bucket name")
    return bucket, key.strip("/")


@cache
def client() -> Any:
    """One client per process, with botocore's adaptive retries for throttling and 5xx."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(retries={"max_attempts": 10, "mode": "adaptive"}))


def describe_error(exc: Exception) -> str:
    """One line for the usual S3 failures: no credentials, no bucket, access denied, no endpoint."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile/role)"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


class S3Object(NamedTuple):
    key: str
    size: int
    etag: str  # without its quotes: the MD5 of a single-part upload, a content hash in any case


def _listed(entry: dict[str, Any]) -> S3Object:
    return S3Object(entry["Key"], entry["Size"], entry["ETag"].strip('"'))


def list_objects(bucket: str, prefix: str) -> list[S3Object]:
    """Every object under the prefix, as S3 lists them."""
    objects: list[S3Object] = []
    for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(_listed(entry) for entry in page.get("Contents", []))
    return objects


def data_objects(uri: str, first_only: bool = False) -> tuple[bool, list[S3Object]]:
    """What an s3:// data reference means, for the start-up check, the download and the run's provenance alike:
    the object with exactly that key, or else every object under `key/` (a folder). `s3://b/sets/rl` never means
    `sets/rlaif/...`. Returns (is_folder, objects); `first_only` stops at the first object.
    ConfigError when there is nothing, or S3 cannot be read."""
    bucket, key = parse_uri(uri)
    try:
        if key:
            first = client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
            if first and first[0]["Key"] == key:  # S3 lists in key order: an exact match comes first
                return False, [_listed(first[0])]
        folder = f"{key}/" if key else ""
        if first_only:
            found = client().list_objects_v2(Bucket=bucket, Prefix=folder, MaxKeys=1).get("Contents", [])
            objects = [_listed(entry) for entry in found]
        else:
            objects = list_objects(bucket, folder)
    except Exception as exc:  # noqa: BLE001 - every S3 failure here is the user's to fix
        raise ConfigError(f"DPO_DATASET={uri}: {describe_error(exc)}") from None
    if not objects:
        raise ConfigError(f"DPO_DATASET={uri}: no such object, nor a folder ({uri.rstrip('/')}/...) of objects")
    return True, objects


def download(uri: str, dest: Path) -> Path:
    """Download one object or every object under a prefix into `dest`; returns the local path.

    Files already there with the right size are kept, so a restarted job does not fetch again.
    """
    from boto3.s3.transfer import TransferConfig

    bucket, key = parse_uri(uri)
    folder, objects = data_objects(uri)
    root = dest / bucket / key
    config = TransferConfig(multipart_threshold=64 * 2**20, max_concurrency=8)
    for object_key, size, _ in objects:
        target = root / object_key[len(key):].lstrip("/") if folder else root
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        client().download_file(bucket, object_key, str(partial), Config=config)
        partial.replace(target)
    return root
