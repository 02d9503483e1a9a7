"""The whole job publishing to S3 (moto over HTTP) and tracking with wandb offline:
no secret anywhere, the same wandb run after a restart, and an upload killed midway completes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import fake_hub
import pytest

from conftest import ROOT, completed_run, job_env, run_job, start_job, wait_for
from entrypoint.run import checkpoints
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


@pytest.fixture(scope="module")
def run_to_publish(tmp_path_factory, cache_dir):
    """A finished run with no destination yet; the Hub tests below publish it."""
    return completed_run(tmp_path_factory, cache_dir, "to-publish", **{**RUN, "report_to": "none"})[0]


@pytest.mark.parametrize("protocol", ["xet", "lfs"])
def test_the_job_publishes_to_the_hub_large_files_through_xet_or_lfs(tmp_path, cache_dir, run_to_publish, protocol):
    """The job itself (a subprocess) pushes to the fake Hub over HTTP. The Hub answers "lfs" for binary files;
    with hf_xet installed (the image) they go through Xet, with HF_HUB_DISABLE_XET=1 through the LFS batch API.
    The run finished with no destination: DPO_HUB_REPO added afterwards publishes it without retraining."""
    output = tmp_path / "run"
    shutil.copytree(run_to_publish, output)
    repo = f"org/adapter-{protocol}"
    env = job_env(cache_dir, output, **{**RUN, "report_to": "none", "hub_repo": repo})
    env.update({"HF_TOKEN": fake_hub.TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": str(int(protocol == "lfs")),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    hub = fake_hub.FakeHub()
    with fake_hub.serve(hub) as url:
        env["HF_ENDPOINT"] = url
        result = run_job(env)
        assert result.returncode == 0, result.stderr[-3000:]
        again = run_job(env)  # published already: nothing is pushed twice
    assert "results already complete" in result.stderr and "resuming from" not in result.stderr
    assert again.returncode == 0 and len(hub.commits) == 1
    assert hub.created == [{"name": repo.split("/")[1], "organization": "org", "visibility": "private",
                            "type": "model"}]

    (commit,) = hub.commits
    adapter = output / "adapter"
    local = {p.relative_to(adapter).as_posix(): p.read_bytes() for p in adapter.rglob("*") if p.is_file()}
    assert set(commit["files"]) | set(commit["lfs"]) == set(local) and not set(commit["files"]) & set(commit["lfs"])
    binary = {path for path in local if path.endswith((".safetensors", ".png"))}  # as the Hub sorts them
    assert "adapter_model.safetensors" in binary and set(commit["lfs"]) == binary
    assert {"adapter_config.json", "README.md", "report.html"} <= set(commit["files"])
    for path, content in commit["files"].items():
        assert content == local[path], path
    for path, entry in commit["lfs"].items():
        assert entry == {"sha256": hashlib.sha256(local[path]).hexdigest(), "size": len(local[path])}, path
    lfs_bytes = sum(len(local[path]) for path in commit["lfs"])
    if protocol == "xet":  # every byte of every LFS file went to the CAS, in xorbs, and a shard registered them
        assert hub.xorb_bytes == lfs_bytes and hub.shards >= 1 and not hub.lfs_objects
    else:  # each LFS file PUT whole, its content checked against its oid
        assert {oid: len(data) for oid, data in hub.lfs_objects.items()} == {
            entry["sha256"]: entry["size"] for entry in commit["lfs"].values()} and hub.xorb_bytes == 0
    state = json.loads((output / "checkpoints" / "state.json").read_text())
    assert state["stages"]["published"]["hub"] == {"to": repo, "url": f"{url}/org/model/commit/abc"}
    assert fake_hub.TOKEN not in result.stderr + result.stdout
