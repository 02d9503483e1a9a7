"""The whole job publishing to S3 (moto over HTTP) and tracking with wandb offline:
no secret anywhere, the same wandb run after a restart, and an upload killed midway completes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from conftest import ROOT, job_env, run_job, start_job, wait_for
from entrypoint import checkpoints
from s3_server import FaultyProxy, moto_server

BUCKET = "dpo-runs"
CANARIES = {"HF_TOKEN": "hf_canaryHFTOKEN0123456789", "WANDB_API_KEY": "canary-wandb-api-key-0123456789",
            "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-0123456789", "AWS_SESSION_TOKEN": "canary-aws-session-012345",
            "DPO_HUB_TOKEN": "canary-dpo-hub-token-0123456789"}
RUN = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="32", max_steps="4",
           per_device_train_batch_size="4", gradient_accumulation_steps="1", logging_steps="2",
           eval_fraction="0.25", eval_generations="1", report_to="wandb")


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as url:
        boto3.client("s3", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield url


def env_for(cache: Path, output: Path, endpoint: str, wandb_dir: Path, **settings: str) -> dict[str, str]:
    env = job_env(cache, output, **{**RUN, **settings})
    env.update({"AWS_ACCESS_KEY_ID": "canary-access-key", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": endpoint, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir),
                "WANDB_PROJECT": "dpo-tests", "WANDB_SILENT": "true"})
    env.update(CANARIES)
    return env


def remote_objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                          region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_canaries_appear_in_no_output_upload_tracker_file_or_log(tmp_path, cache_dir, s3_endpoint):
    output, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    env = env_for(cache_dir, output, s3_endpoint, wandb_dir, s3_uri=f"s3://{BUCKET}/canary")
    result = run_job(env)
    assert result.returncode == 0, result.stderr[-3000:]
    uploaded = remote_objects(s3_endpoint, "canary/")
    assert "canary/manifest.json" in uploaded and "canary/adapter/adapter_model.safetensors" in uploaded
    places = {f"file {p}": p.read_bytes() for root in (output, wandb_dir) for p in root.rglob("*") if p.is_file()}
    places.update({f"s3 {k}": v for k, v in uploaded.items()})
    places.update({"stdout": result.stdout.encode(), "stderr": result.stderr.encode()})
    assert any("wandb" in name for name in places)  # the tracker really wrote its files
    for name, value in CANARIES.items():
        leaks = [place for place, data in places.items() if value.encode() in data]
        assert not leaks, f"{name} leaked into {leaks}"


def test_restart_continues_the_same_wandb_run(tmp_path, cache_dir, s3_endpoint):
    output, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    env = env_for(cache_dir, output, s3_endpoint, wandb_dir, max_steps="12", save_steps="3")
    process = start_job(env)
    wait_for(output / "checkpoints" / "checkpoint-3" / checkpoints.COMPLETE_MARKER, process)
    process.kill()
    process.wait()
    assert run_job(env).returncode == 0
    runs = sorted(p.name for p in (wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({name.split("-", 3)[-1] for name in runs}) == 1, runs


def test_killed_during_upload_then_restarted_completes_the_upload(tmp_path, cache_dir, s3_endpoint):
    output, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    proxy = FaultyProxy(s3_endpoint, "slow", delay=0.5)
    env = env_for(cache_dir, output, proxy.url, wandb_dir, s3_uri=f"s3://{BUCKET}/killed", report_to="none")
    try:
        process = subprocess.Popen([sys.executable, "-m", "entrypoint"], env=env, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while proxy.puts < 2:  # results written, upload under way
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
        process.wait()
    finally:
        proxy.close()
    assert (output / "manifest.json").is_file()
    assert "killed/manifest.json" not in remote_objects(s3_endpoint, "killed/")

    env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    restarted = run_job(env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "results already complete" in restarted.stderr
    uploaded = remote_objects(s3_endpoint, "killed/")
    manifest = json.loads(uploaded["killed/manifest.json"])
    assert manifest == json.loads((output / "manifest.json").read_text())
    for entry in manifest["files"]:
        assert uploaded[f"killed/{entry['path']}"] == (output / entry["path"]).read_bytes()


def test_a_destination_added_after_the_run_finished_is_published_without_retraining(tmp_path, cache_dir, s3_endpoint):
    """It used to be skipped for good: state.json said `published` (to nowhere) and the destination is not among
    the settings a restart compares."""
    output, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    first = run_job(env_for(cache_dir, output, s3_endpoint, wandb_dir, report_to="none"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert not remote_objects(s3_endpoint, "later/")
    adapter = (output / "adapter" / "adapter_model.safetensors").read_bytes()
    for prefix in ("later", "moved"):  # added after the run, then changed
        again = run_job(env_for(cache_dir, output, s3_endpoint, wandb_dir, report_to="none",
                                s3_uri=f"s3://{BUCKET}/{prefix}"))
        assert again.returncode == 0, again.stderr[-3000:]
        assert "results already complete" in again.stderr  # no retraining
        uploaded = remote_objects(s3_endpoint, f"{prefix}/")
        assert uploaded[f"{prefix}/adapter/adapter_model.safetensors"] == adapter
        assert f"{prefix}/manifest.json" in uploaded
    state = json.loads((output / "checkpoints" / "state.json").read_text())
    assert state["stages"]["published"]["s3"]["to"] == f"s3://{BUCKET}/moved"
