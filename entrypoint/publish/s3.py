"""Publish the run directory to `DPO_S3_URI`: verified, manifest last, idempotent.

    s3://bucket/prefix/adapter/...        every file listed in the local manifest.json
    s3://bucket/prefix/metrics.json       ...
    s3://bucket/prefix/manifest.json      last, once every other object is verified

A reader that finds the remote manifest finds a complete run. Each object carries its sha256 as
metadata (`x-amz-meta-sha256`) and is uploaded with S3's SHA256 checksum, so an upload is checked
end to end and a re-run can tell, without downloading, which objects are already there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.outputs import MANIFEST
from entrypoint.s3 import client, describe_error, parse_uri

log = logging.getLogger(__name__)
SHA_KEY = "sha256"  # user metadata: x-amz-meta-sha256


class UploadError(Exception):
    """An object did not arrive as it was sent (size or checksum differ) after botocore's retries."""


def _key(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix else path


def remote_manifest(bucket: str, prefix: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        body = client().get_object(Bucket=bucket, Key=_key(prefix, MANIFEST))["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


def check_destination(uri: str, run_name: str, overwrite: bool) -> None:
    """Start-up check: credentials, bucket, and no other run's results under the prefix."""
    from botocore.exceptions import ClientError

    bucket, prefix = parse_uri(uri)
    try:
        client().head_bucket(Bucket=bucket)
        remote = remote_manifest(bucket, prefix)
    except ClientError as exc:
        missing = exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket")
        detail = f"NoSuchBucket: bucket {bucket!r} does not exist" if missing else describe_error(exc)
        raise ConfigError(f"DPO_S3_URI={uri}: {detail}") from None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: the user's to fix
        raise ConfigError(f"DPO_S3_URI={uri}: {describe_error(exc)}") from None
    if remote and remote.get("run_name") != run_name and not overwrite:
        raise ConfigError(f"DPO_S3_URI={uri} already holds run {remote.get('run_name')!r}; use another prefix "
                          "or set DPO_OVERWRITE=1 to replace it")


def _matches(bucket: str, key: str, entry: dict[str, Any]) -> bool:
    """Whether the object is there with the entry's size and sha256."""
    from botocore.exceptions import ClientError

    try:
        head = client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head["ContentLength"] == entry["size"] and head.get("Metadata", {}).get(SHA_KEY) == entry["sha256"]


def _put(path: Path, bucket: str, key: str, entry: dict[str, Any], transfer: Any) -> None:
    client().upload_file(str(path), bucket, key, Config=transfer, ExtraArgs={
        "ChecksumAlgorithm": "SHA256", "Metadata": {SHA_KEY: entry["sha256"]}})
    if not _matches(bucket, key, entry):
        raise UploadError(f"s3://{bucket}/{key}: stored object differs from {path} after upload")


def transfer_config(multipart_threshold: int = 64 * 2**20, chunk_size: int = 64 * 2**20) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=chunk_size,
                          max_concurrency=8)


def upload_run(run_dir: Path, uri: str, overwrite: bool = False, transfer: Any = None) -> dict[str, Any]:
    """Upload what the local manifest lists, verify each object, then the manifest. Returns counts."""
    bucket, prefix = parse_uri(uri)
    transfer = transfer or transfer_config()
    local = json.loads((run_dir / MANIFEST).read_text())
    remote = remote_manifest(bucket, prefix)
    summary = {"uri": uri, "uploaded": 0, "skipped": 0, "bytes": 0}
    if remote == local:
        summary["skipped"] = len(local["files"]) + 1
        log.info("s3: %s already holds this run; nothing to upload", uri)
        return summary
    if remote is not None:
        if remote.get("run_name") != local["run_name"] and not overwrite:
            raise ConfigError(f"DPO_S3_URI={uri} already holds run {remote.get('run_name')!r}; "
                              "set DPO_OVERWRITE=1 to replace it")
        # Readers must not see the old manifest while its objects are being replaced.
        client().delete_object(Bucket=bucket, Key=_key(prefix, MANIFEST))
    for entry in local["files"]:
        key = _key(prefix, entry["path"])
        if _matches(bucket, key, entry):
            summary["skipped"] += 1
            continue
        _put(run_dir / entry["path"], bucket, key, entry, transfer)
        summary["uploaded"] += 1
        summary["bytes"] += entry["size"]
        log.info("s3: uploaded %s (%d bytes)", key, entry["size"])
    manifest_path = run_dir / MANIFEST
    from entrypoint.outputs import sha256_file

    _put(manifest_path, bucket, _key(prefix, MANIFEST), {"size": manifest_path.stat().st_size,
                                                         "sha256": sha256_file(manifest_path)}, transfer)
    summary["uploaded"] += 1
    log.info("s3: %s complete (%d uploaded, %d already there)", uri, summary["uploaded"], summary["skipped"])
    return summary
