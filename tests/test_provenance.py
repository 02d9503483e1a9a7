"""Provenance: every run records what made it (manifest.json, model card, wandb), and `--from-run` runs it again."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tomllib
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_tracking import logged_config, wandb_records

from conftest import ROOT, completed_run, job_env, run_job, settings_from
from entrypoint.config.names import REDACTED
from entrypoint.config.settings import public_dict
from entrypoint.errors import ConfigError
from entrypoint.run import record as run_record
from entrypoint.run import rerun
from entrypoint.run.outputs import sha256_file

DEMO = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="40", max_steps="4",
            per_device_train_batch_size="4", gradient_accumulation_steps="1", learning_rate="5e-3",
            logging_steps="2", eval_fraction="0.2", eval_generations="1", save_steps="3")


def recorded_provenance(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["provenance"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cache_dir):
    return completed_run(tmp_path_factory, cache_dir, "recorded", **DEMO)[0]


@pytest.fixture(scope="module")
def rerun_of_demo(demo_run, tmp_path_factory, cache_dir):
    """`--from-run` of the demo run into a new directory, with settings changed that do not touch training: one
    answer fewer to generate, and tracking in an offline wandb run."""
    output, wandb_dir = tmp_path_factory.mktemp("rerun"), tmp_path_factory.mktemp("wandb")
    env = {**job_env(cache_dir, output, eval_generations="0", report_to="wandb"), "WANDB_MODE": "offline",
           "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    result = run_job(env, "--from-run", str(demo_run))
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result, wandb_dir


def test_a_rerun_gives_a_bit_identical_adapter_and_the_same_fingerprints(demo_run, rerun_of_demo):
    output, result, _ = rerun_of_demo
    adapter = "adapter/adapter_model.safetensors"
    assert (output / adapter).read_bytes() == (demo_run / adapter).read_bytes()
    was, now = recorded_provenance(demo_run), recorded_provenance(output)
    assert now["dataset"] == was["dataset"] and now["model"] == was["model"]
    assert "from-run: base model and data are as recorded" in result.stderr
    config = json.loads((output / "config.json").read_text())
    assert config["model"] == "tiny:llava-next" and config["max_steps"] == 4 and config["learning_rate"] == 5e-3
    assert json.loads((output / "manifest.json").read_text())["run_name"] == "tiny-llava-next-sample-rlaif-v-rerun"


def test_what_differs_from_the_record_is_printed_before_anything_starts(demo_run, rerun_of_demo):
    output, result, _ = rerun_of_demo
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"from-run {demo_run} (run tiny-llava-next-sample-rlaif-v,")
    assert "  DPO_EVAL_GENERATIONS: recorded 1, now 0" in lines and "  DPO_REPORT_TO: recorded none, now wandb" in lines
    assert f"  DPO_OUTPUT_DIR: recorded {demo_run}, now {output}" in lines
    assert not any("DPO_MAX_STEPS" in line or "DPO_MODEL:" in line for line in lines)  # re-applied as recorded


def test_the_manifest_records_model_data_code_environment_and_seed(demo_run, cache_dir):
    record = recorded_provenance(demo_run)
    model = record["model"]
    assert model["id"] == "tiny:llava-next" and model["revision"] is None
    assert model["content"]["sha256"] == run_record.directory_content(cache_dir / "tiny" / "llava-next")["sha256"]
    assert model["content"]["hashed"] == "every file whole" and model["content"]["files"] >= 5
    data = record["dataset"]
    sample = next((cache_dir / "samples").glob("rlaif-v-48-*.parquet"))
    assert data["id"] == "sample:rlaif-v" and data["split"] == "train"
    assert data["files"] == [{"path": sample.name, "size": sample.stat().st_size, "sha256": sha256_file(sample)}]
    report = json.loads((demo_run / "data_report.json").read_text())
    assert data["train"]["pairs"] == report["train_pairs"] and data["eval"]["pairs"] == report["eval_pairs"]
    assert all(len(data[split]["sha256"]) == 64 for split in ("train", "eval"))
    code = record["code"]
    assert code["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert code["commit"] == head.stdout.strip() and code["commit_from"] == "git"
    assert code["requirements_lock"]["sha256"] == sha256_file(ROOT / "requirements.lock")
    for package in ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate"):
        assert code["packages"][package] == metadata.version(package)
    environment = record["environment"]
    assert environment["world_size"] == 1 and environment["gpu_count"] == len(environment["gpus"])
    assert {"image_digest", "cuda", "driver"} <= set(environment)
    assert record["settings"]["seed"] == 42 and record["settings"]["config"] == "config.json"


def test_wandb_config_carries_the_whole_record(rerun_of_demo):
    output, _, wandb_dir = rerun_of_demo
    [run_file] = (wandb_dir / "wandb").glob("offline-run-*/*.wandb")
    assert logged_config(wandb_records(run_file))["provenance"] == recorded_provenance(output)


def test_the_model_card_carries_a_compact_subset(demo_run):
    card = (demo_run / "adapter" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])["provenance"]
    record = recorded_provenance(demo_run)
    assert meta["base_model_revision"] == f"sha256:{record['model']['content']['sha256']}"
    assert meta["train_pairs_sha256"] == record["dataset"]["train"]["sha256"]
    assert meta["eval_pairs_sha256"] == record["dataset"]["eval"]["sha256"]
    assert meta["code_version"] == record["code"]["version"] and meta["code_commit"] == record["code"]["commit"]


@pytest.fixture(scope="module")
def local_data_run(tmp_path_factory, cache_dir, demo_run):
    """A run from a local parquet folder (a copy of the sample): every one of its rows is trained or evaluated."""
    data = tmp_path_factory.mktemp("data")
    shutil.copy(next((cache_dir / "samples").glob("rlaif-v-48-*.parquet")), data / "train.parquet")
    settings = {**{k: v for k, v in DEMO.items() if k != "max_samples"}, "dataset": str(data), "eval_generations": "0"}
    return completed_run(tmp_path_factory, cache_dir, "local", **settings)[0], data / "train.parquet"


def test_changed_data_is_exit_2_naming_it_and_runs_with_allow_drift(local_data_run, tmp_path, cache_dir):
    run_dir, data_file = local_data_run
    table = pq.read_table(data_file)
    rows = table.to_pylist()
    rows[7]["chosen"] += " Edited."
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), data_file)

    refused = run_job(job_env(cache_dir, tmp_path / "rerun"), "--from-run", str(run_dir / "manifest.json"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: --from-run {run_dir / 'manifest.json'}: data file train.parquet: sha256 ")
    assert "pairs: fingerprint" in error and "DPO_ALLOW_DRIFT=1" in error
    assert "model: loading" not in refused.stderr  # found before the model is loaded

    allowed = run_job(job_env(cache_dir, tmp_path / "rerun", allow_drift="1"), "--from-run", str(run_dir))
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "DPO_ALLOW_DRIFT=1: running although data file train.parquet: sha256" in allowed.stderr
    was, now = recorded_provenance(run_dir)["dataset"], recorded_provenance(tmp_path / "rerun")["dataset"]
    assert now["files"][0]["sha256"] == sha256_file(data_file) != was["files"][0]["sha256"]
    assert (now["train"], now["eval"]) != (was["train"], was["eval"])


def test_recorded_settings_round_trip_through_the_environment_and_the_environment_wins(demo_run, monkeypatch):
    environ = {"DPO_LEARNING_RATE": "1e-4"}
    recorded = rerun.start(str(demo_run), environ)
    settings = settings_from(monkeypatch, **environ)
    now, was = public_dict(settings), recorded.config
    assert now["learning_rate"] == 1e-4
    assert {k: v for k, v in now.items() if k not in rerun.NOT_REAPPLIED | {"learning_rate"}} == \
        {k: was[k] for k in now if k not in rerun.NOT_REAPPLIED | {"learning_rate"}}
    assert "DPO_LEARNING_RATE: recorded 0.005, now 0.0001" in rerun.differences(recorded, settings)
    with pytest.raises(ConfigError, match="the recorded run's own directory"):
        rerun.refuse_recorded_dirs(recorded, settings_from(monkeypatch, DPO_OUTPUT_DIR=str(demo_run)))


def test_secrets_are_never_re_applied_and_hub_revisions_are_pinned(monkeypatch):
    record = {"run_name": "r", "files": [], "provenance": {"model": {"id": "org/model", "commit": "a" * 40},
                                                           "dataset": {"id": "org/data", "commit": "b" * 40}}}
    recorded = rerun.Recorded("run", record, {"model": "org/model", "dataset": "org/data", "hub_token": REDACTED})
    monkeypatch.setattr(rerun, "_on_hub", lambda kind, repo, commit: True)
    environ = {"DPO_MODEL_REVISION": "main"}
    pins = rerun.pin_revisions(recorded, environ)
    rerun.apply(recorded, pins, environ)
    assert pins == {"dataset_revision": "b" * 40} and environ["DPO_DATASET_REVISION"] == "b" * 40
    assert environ["DPO_MODEL_REVISION"] == "main" and "DPO_HUB_TOKEN" not in environ
    assert environ["DPO_RUN_NAME"] == "r-rerun"
    monkeypatch.setattr(rerun, "_on_hub", lambda kind, repo, commit: False)  # the Hub lost those commits
    with pytest.raises(ConfigError, match=f"model org/model: the recorded commit {'a' * 40} is no longer on the Hub"):
        rerun.pin_revisions(recorded, {})
    assert rerun.pin_revisions(recorded, {"DPO_ALLOW_DRIFT": "1"}) == {}


def test_a_different_package_version_is_a_warning(demo_run):
    recorded = rerun.read(str(demo_run))
    recorded.run_record["code"]["packages"]["trl"] = "0.0.1"
    assert "warning: trl: recorded 0.0.1, now " + metadata.version("trl") in rerun.code_warnings(recorded, None)


def test_hub_commits_come_from_the_download_path_or_the_cache_refs(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--m" / "snapshots" / ("c" * 40) / "config.json"
    assert run_record.snapshot_commit(snapshot) == "c" * 40 and run_record.snapshot_commit(tmp_path / "x") is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "datasets--org--data" / "refs").mkdir(parents=True)
    (tmp_path / "datasets--org--data" / "refs" / "main").write_text("d" * 40)
    assert run_record.hub_commit("dataset", "org/data", None) == "d" * 40
    assert run_record.hub_commit("dataset", "org/other", None) is None


def test_a_large_model_directory_is_hashed_by_sampling_its_weights(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(3 * 2**20))
    monkeypatch.setattr(run_record, "FULL_HASH_MAX_BYTES", 2**20)
    first = run_record.directory_content(tmp_path)
    assert first["hashed"].startswith("weights sampled")
    with weights.open("r+b") as handle:  # a byte in the middle changes
        handle.seek(3 * 2**19)
        handle.write(b"\1")
    assert run_record.directory_content(tmp_path)["sha256"] != first["sha256"]


def test_the_pairs_fingerprint_follows_order_texts_and_image_bytes():
    import datasets

    def pairs(chosen, image):
        message = [{"role": "user", "content": "q"}]
        return datasets.Dataset.from_dict(
            {"prompt": [message] * 2, "chosen": [[{"role": "assistant", "content": c}] for c in chosen],
             "images": [[{"bytes": b, "path": None}] for b in image]},
            features=datasets.Features({"prompt": datasets.List({"role": datasets.Value("string"),
                                                                 "content": datasets.Value("string")}),
                                        "chosen": datasets.List({"role": datasets.Value("string"),
                                                                 "content": datasets.Value("string")}),
                                        "images": datasets.List(datasets.Image())}))

    base = run_record.pairs_fingerprint(pairs(["a", "b"], [b"x", b"y"]))
    assert base["pairs"] == 2
    assert base == run_record.pairs_fingerprint(pairs(["a", "b"], [b"x", b"y"]))
    for other in (pairs(["b", "a"], [b"y", b"x"]), pairs(["a", "c"], [b"x", b"y"]), pairs(["a", "b"], [b"x", b"z"])):
        assert run_record.pairs_fingerprint(other)["sha256"] != base["sha256"]
    assert run_record.pairs_fingerprint(pairs(["a", "b"], [b"x", b"y"]).select([1, 0]))["sha256"] != base["sha256"]


def test_s3_data_is_recorded_by_etag_and_a_run_is_read_back_from_s3(demo_run, bucket):
    bucket.put_object(Bucket="data", Key="sets/rl/part-0.parquet", Body=b"rows")
    bucket.put_object(Bucket="data", Key="sets/rlx/other.parquet", Body=b"not this folder")
    for name in ("manifest.json", "config.json"):
        bucket.upload_file(str(demo_run / name), "data", f"runs/demo/{name}")
    assert run_record.s3_objects("s3://data/sets/rl") == [
        {"key": "sets/rl/part-0.parquet", "size": 4, "etag": hashlib.md5(b"rows").hexdigest()}]
    for where in ("s3://data/runs/demo/manifest.json", "s3://data/runs/demo"):
        recorded = rerun.read(where)
        assert recorded.config == json.loads((demo_run / "config.json").read_text())
        assert recorded.run_dir is None and recorded.run_record == recorded_provenance(demo_run)
    with pytest.raises(ConfigError, match="cannot read s3://data/runs/gone/manifest.json"):
        rerun.read("s3://data/runs/gone/manifest.json")


def test_an_installed_package_records_the_lock_it_carries(tmp_path, monkeypatch):
    """Installed (the image: site-packages, no checkout around it), the code has no requirements.lock beside it; the
    image puts a copy inside the package (Dockerfile), and that is what the record hashes."""
    site = tmp_path / "site-packages"
    (site / "entrypoint").mkdir(parents=True)
    monkeypatch.setattr(run_record, "PACKAGE_DIR", site / "entrypoint")
    assert run_record.lock_file(site)["sha256"] is None  # nothing there: said, with the reason
    shutil.copy(ROOT / "requirements.lock", site / "entrypoint" / "requirements.lock")
    assert run_record.lock_file(site) == {"path": "requirements.lock",
                                          "sha256": sha256_file(ROOT / "requirements.lock")}
