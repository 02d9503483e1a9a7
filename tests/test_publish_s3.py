"""Publishing to S3 against moto's real server over HTTP, reached through AWS_ENDPOINT_URL_S3 as R2,
MinIO or GCS would be: verified, manifest last, idempotent, fault-tolerant."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from conftest import ROOT
from entrypoint.errors import ConfigError
from entrypoint.publish.s3 import check_prefix, transfer_config, upload_run
from entrypoint.remote import s3
from entrypoint.run.outputs import write_json, write_manifest
from s3_server import FaultyProxy

BUCKET = "runs"
SMALL_PARTS = dict(multipart_threshold=5 * 2**20, chunk_size=5 * 2**20)  # S3's minimum part size


@pytest.fixture
def endpoint(s3_endpoint):
    """conftest's moto server, with the bucket the runs go to."""
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    return s3_endpoint


def use_endpoint(monkeypatch, url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    s3.client.cache_clear()


def make_run(root: Path, name: str = "run-a", big: int = 11 * 2**20) -> Path:
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (big // 256))
    (root / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    write_json(root / "metrics.json", {"loss": 0.5})
    write_manifest(root, name)
    return root


def remote(url: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_uploads_mirrored_verified_multipart_and_manifest_last(tmp_path, endpoint, monkeypatch):
    run = make_run(tmp_path / "run")
    proxy = FaultyProxy(endpoint, "log")  # the order of the requests, as the server saw them
    use_endpoint(monkeypatch, proxy.url)
    try:
        summary = upload_run(run, f"s3://{BUCKET}/exp/1", transfer=transfer_config(**SMALL_PARTS))
    finally:
        proxy.close()
        use_endpoint(monkeypatch, endpoint)
    assert summary["uploaded"] == 4
    objects = remote(endpoint)
    assert set(objects) == {f"exp/1/{p}" for p in ("adapter/adapter_model.safetensors",
                                                    "adapter/adapter_config.json", "metrics.json", "manifest.json")}
    for key, body in objects.items():
        assert body == (run / key.removeprefix("exp/1/")).read_bytes()
    client = boto3.client("s3", endpoint_url=endpoint)
    head = client.head_object(Bucket=BUCKET, Key="exp/1/adapter/adapter_model.safetensors", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # 11 MiB in 5 MiB parts: multipart
    # manifest last: its PUT is sent only after every other object's writes (parts, completions) were answered
    writes = [r for r in proxy.log if r["method"] in ("PUT", "POST") and r["path"].startswith(f"/{BUCKET}/exp/1/")]
    manifest = [r for r in writes if r["path"].endswith("/manifest.json")]
    others = [r for r in writes if not r["path"].endswith("/manifest.json")]
    assert len(manifest) == 1 and len(others) >= 3 + 2  # 3 parts + multipart start/complete, 2 small objects
    assert manifest[0]["started"] > max(r["finished"] for r in others)


def test_rerun_uploads_nothing_and_another_run_is_refused_without_overwrite(tmp_path, endpoint):
    run = make_run(tmp_path / "a")
    upload_run(run, f"s3://{BUCKET}/p")
    assert upload_run(run, f"s3://{BUCKET}/p")["uploaded"] == 0
    other = make_run(tmp_path / "b", name="run-b", big=1024)
    with pytest.raises(ConfigError, match="already holds run 'run-a'.*DPO_OVERWRITE=1"):
        check_prefix(f"s3://{BUCKET}/p", "run-b", overwrite=False)
    with pytest.raises(ConfigError):
        upload_run(other, f"s3://{BUCKET}/p")
    check_prefix(f"s3://{BUCKET}/p", "run-a", overwrite=False)  # the same run may resume
    (other / "adapter" / "adapter_config.json").unlink()
    write_manifest(other, "run-b")
    upload_run(other, f"s3://{BUCKET}/p", overwrite=True)
    objects = remote(endpoint)
    assert json.loads(objects["p/manifest.json"])["run_name"] == "run-b"
    # run-a's file that run-b lacks is gone; the start-up write check left nothing behind
    assert set(objects) == {"p/manifest.json", "p/metrics.json", "p/adapter/adapter_model.safetensors"}


def test_an_object_changed_behind_our_back_is_uploaded_again(tmp_path, endpoint):
    run = make_run(tmp_path / "run", big=1024)
    upload_run(run, f"s3://{BUCKET}/t")
    entry = next(e for e in json.loads((run / "manifest.json").read_text())["files"] if e["path"] == "metrics.json")
    tampered = bytes(reversed((run / "metrics.json").read_bytes()))  # same size, same sha256 metadata
    boto3.client("s3", endpoint_url=endpoint).put_object(
        Bucket=BUCKET, Key="t/metrics.json", Body=tampered, ChecksumAlgorithm="SHA256",
        Metadata={"sha256": entry["sha256"]})
    boto3.client("s3", endpoint_url=endpoint).delete_object(Bucket=BUCKET, Key="t/manifest.json")
    summary = upload_run(run, f"s3://{BUCKET}/t")
    assert summary["uploaded"] == 2  # metrics.json and the manifest
    assert remote(endpoint)["t/metrics.json"] == (run / "metrics.json").read_bytes()


@pytest.mark.parametrize(("problem", "message"), [
    ("bucket", "NoSuchBucket"),
    ("credentials", "no AWS credentials"),
])
def test_missing_bucket_or_credentials_is_a_clear_startup_error(monkeypatch, endpoint, problem, message):
    uri = f"s3://{BUCKET}/p"
    if problem == "bucket":
        uri = "s3://no-such-bucket/p"
    else:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3.client.cache_clear()
    with pytest.raises(ConfigError, match=message):
        check_prefix(uri, "run-a", overwrite=False)


def test_a_read_only_credential_is_a_startup_error_not_a_failure_after_training(monkeypatch, endpoint):
    import moto.settings

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")  # IAM is global: name a region
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Head*"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    s3.client.cache_clear()
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks IAM policies from now on
    with pytest.raises(ConfigError, match=f"DPO_S3_URI=s3://{BUCKET}/p: AccessDenied"):
        check_prefix(f"s3://{BUCKET}/p", "run-a", overwrite=False)


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_upload_survives_server_errors_and_dropped_connections(tmp_path, monkeypatch, endpoint, mode):
    proxy = FaultyProxy(endpoint, mode, every=2, limit=3)
    try:
        use_endpoint(monkeypatch, proxy.url)
        run = make_run(tmp_path / "run", big=11 * 2**20)
        upload_run(run, f"s3://{BUCKET}/f", transfer=transfer_config(**SMALL_PARTS))
    finally:
        proxy.close()
    assert proxy.faults == 3, (proxy.puts, proxy.faults)
    objects = remote(endpoint)
    for entry in json.loads((run / "manifest.json").read_text())["files"]:
        assert objects[f"f/{entry['path']}"] == (run / entry["path"]).read_bytes()


def test_a_crash_mid_upload_leaves_no_manifest_and_a_rerun_completes(tmp_path, monkeypatch, endpoint):
    run = make_run(tmp_path / "run", big=1024)
    proxy = FaultyProxy(endpoint, "slow", delay=1.0)
    code = ("import sys; from pathlib import Path; from entrypoint.publish.s3 import upload_run; "
            "upload_run(Path(sys.argv[1]), sys.argv[2])")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": proxy.url, "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-c", code, str(run), f"s3://{BUCKET}/c"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while proxy.puts < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()
        process.wait(timeout=10)
    finally:
        proxy.close()
    assert "c/manifest.json" not in remote(endpoint)
    summary = upload_run(run, f"s3://{BUCKET}/c")
    assert summary["skipped"] >= 1  # what landed before the crash is not sent again
    assert json.loads(remote(endpoint)["c/manifest.json"]) == json.loads((run / "manifest.json").read_text())
