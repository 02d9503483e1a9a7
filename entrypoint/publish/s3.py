"""Publish the run directory to `DPO_S3_URI`: verified, manifest last, idempotent.

    s3://bucket/prefix/adapter/...        every file listed in the local manifest.json
    s3://bucket/prefix/metrics.json       ...
    s3://bucket/prefix/manifest.json      last, once every other object is verified

A reader that finds the remote manifest finds a complete run. Each object is uploaded with S3's
SHA256 checksum (the server rejects a body that does not match) and carries the file's sha256 as
metadata (`x-amz-meta-sha256`), so a re-run can tell without downloading which objects are already
there; multipart objects only have a composite checksum, the metadata works for every size.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.logs import progress, size_text
from entrypoint.remote.s3 import client, describe_error, parse_uri
from entrypoint.run.outputs import MANIFEST, sha256_file

log = logging.getLogger(__name__)
SHA_KEY = "sha256"  # user metadata: x-amz-meta-sha256
WRITE_CHECK = ".dpo-write-check"
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


class UploadError(Exception):
    """An object did not arrive as it was sent (size or checksum differ) after botocore's retries."""


def _key(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix else path


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def remote_manifest(bucket: str, prefix: str) -> dict[str, Any] | None:
    """The manifest under the prefix, or None when no complete run is there."""
    from botocore.exceptions import ClientError

    try:
        body = client().get_object(Bucket=bucket, Key=_key(prefix, MANIFEST))["Body"].read()
    except ClientError as exc:
        if _code(exc) in _MISSING:
            return None
        raise
    return json.loads(body)


def _refuse_other_run(uri: str, remote: dict[str, Any] | None, run_name: str, overwrite: bool) -> None:
    if remote is None or remote.get("run_name") == run_name:
        return
    if not overwrite:
        raise ConfigError(f"DPO_S3_URI={uri} already holds run {remote.get('run_name')!r}; use another prefix "
                          "or set DPO_OVERWRITE=1 to replace it")
    log.warning("s3: %s holds run %r; it will be replaced (DPO_OVERWRITE=1)", uri, remote.get("run_name"))


def _check_writable(bucket: str, prefix: str) -> None:
    """Read access is not enough: a read-only credential would otherwise fail after training."""
    key = _key(prefix, WRITE_CHECK)
    client().put_object(Bucket=bucket, Key=key, Body=b"")
    client().delete_object(Bucket=bucket, Key=key)


def check_prefix(uri: str, run_name: str, overwrite: bool) -> None:
    """Start-up check (also in --dry-run): credentials, bucket, write access, and no other run's
    results under the prefix unless DPO_OVERWRITE=1."""
    from botocore.exceptions import ClientError

    bucket, prefix = parse_uri(uri)
    try:
        client().head_bucket(Bucket=bucket)
        remote = remote_manifest(bucket, prefix)
        _check_writable(bucket, prefix)
    except ClientError as exc:
        detail = f"NoSuchBucket: bucket {bucket!r} does not exist" if _code(exc) in _MISSING else describe_error(exc)
        raise ConfigError(f"DPO_S3_URI={uri}: {detail}") from None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: the user's to fix
        raise ConfigError(f"DPO_S3_URI={uri}: {describe_error(exc)}") from None
    _refuse_other_run(uri, remote, run_name, overwrite)


def _matches(bucket: str, key: str, entry: dict[str, Any]) -> bool:
    """Whether the object is there with the entry's size and sha256 (and, for single-part
    objects, S3's own SHA256 of what it stored)."""
    from botocore.exceptions import ClientError

    try:
        head = client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if _code(exc) in _MISSING:
            return False
        raise
    single_part = "-" not in head.get("ETag", "")  # a multipart object's checksum is of its parts' checksums
    stored = head.get("ChecksumSHA256")
    if single_part and stored and stored != base64.b64encode(bytes.fromhex(entry["sha256"])).decode():
        return False
    return head["ContentLength"] == entry["size"] and head.get("Metadata", {}).get(SHA_KEY) == entry["sha256"]


def _put(path: Path, bucket: str, key: str, entry: dict[str, Any], transfer: Any, sent: Any = None) -> None:
    """Upload and verify; `sent(n)` hears of the bytes as boto3 sends them (from its transfer threads)."""
    client().upload_file(str(path), bucket, key, Config=transfer, Callback=sent, ExtraArgs={
        "ChecksumAlgorithm": "SHA256", "Metadata": {SHA_KEY: entry["sha256"]}})
    if not _matches(bucket, key, entry):
        raise UploadError(f"s3://{bucket}/{key}: stored object differs from {path} after upload")


def transfer_config(multipart_threshold: int = 64 * 2**20, chunk_size: int = 64 * 2**20) -> Any:
    """Multipart above the threshold (parts of `chunk_size`; S3 wants at least 5 MiB per part)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=chunk_size,
                          max_concurrency=8)


def _withdraw(bucket: str, prefix: str, remote: dict[str, Any], local: dict[str, Any]) -> None:
    """Before a prefix's run is replaced: its manifest goes first (readers must not trust it while
    its objects change), then the objects the new run does not have."""
    client().delete_object(Bucket=bucket, Key=_key(prefix, MANIFEST))
    kept = {entry["path"] for entry in local["files"]}
    for entry in remote.get("files", []):
        if entry["path"] not in kept:
            client().delete_object(Bucket=bucket, Key=_key(prefix, entry["path"]))


def upload_run(run_dir: Path, uri: str, overwrite: bool = False, transfer: Any = None) -> dict[str, Any]:
    """Upload what the local manifest lists, verify each object, then the manifest. Returns counts.

    Safe to repeat: objects already there (same size and sha256) are skipped, and a prefix that
    already holds this exact manifest is left alone.
    """
    bucket, prefix = parse_uri(uri)
    transfer = transfer or transfer_config()
    local = json.loads((run_dir / MANIFEST).read_text())
    remote = remote_manifest(bucket, prefix)
    summary = {"uri": uri, "uploaded": 0, "skipped": 0, "bytes": 0}
    if remote == local:
        summary["skipped"] = len(local["files"]) + 1
        log.info("s3: %s already holds this run; nothing to upload", uri)
        return summary
    _refuse_other_run(uri, remote, local["run_name"], overwrite)
    if remote is not None:
        _withdraw(bucket, prefix, remote, local)
    todo = []
    for entry in local["files"]:
        if _matches(bucket, _key(prefix, entry["path"]), entry):
            summary["skipped"] += 1
        else:
            todo.append(entry)
    manifest = run_dir / MANIFEST
    manifest_entry = {"path": MANIFEST, "size": manifest.stat().st_size, "sha256": sha256_file(manifest)}
    todo.append(manifest_entry)  # last: once every other object is verified
    total = sum(entry["size"] for entry in todo)
    log.info("s3: uploading %d files (%s) to %s; %d already there", len(todo), size_text(total), uri,
             summary["skipped"])
    with progress(f"s3: upload to {uri}", total, "B") as sent:
        for number, entry in enumerate(todo, 1):
            key = _key(prefix, entry["path"])
            _put(run_dir / entry["path"], bucket, key, entry, transfer, sent)
            summary["uploaded"] += 1
            summary["bytes"] += entry["size"]
            log.info("s3: uploaded %s (%d bytes; file %d of %d)", key, entry["size"], number, len(todo))
    log.info("s3: %s complete (%d uploaded, %d already there)", uri, summary["uploaded"], summary["skipped"])
    return summary
