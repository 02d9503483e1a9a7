"""Shared fixtures. Everything is generated here at test time; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Tests start with no DPO_* setting and no credential from the developer's shell."""
    for key in list(os.environ):
        if key.upper().startswith(("DPO_", "WANDB_", "AWS_")) or key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session: tiny models and samples are built once."""
    return tmp_path_factory.mktemp("cache")


def job_env(cache: Path, output: Path, **settings: str) -> dict[str, str]:
    """The environment of a container run: a clean base plus DPO_* settings, nothing else."""
    env = {key: value for key, value in os.environ.items()
           if not key.upper().startswith(("DPO_", "WANDB_", "AWS_")) and key not in ("HF_TOKEN",)}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "HF_HOME": str(cache / "hf"), "DPO_CACHE_DIR": str(cache), "DPO_OUTPUT_DIR": str(output)})
    env.update({f"DPO_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def run_job(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m entrypoint` as the container runs it."""
    return subprocess.run([sys.executable, "-m", "entrypoint", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def completed_run(tmp_path_factory, cache: Path, name: str, **settings: str) -> tuple[Path, Any]:
    """A whole job run that must succeed: its output directory and the finished process."""
    output = tmp_path_factory.mktemp(name)
    result = run_job(job_env(cache, output, **settings))
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def settings_from(monkeypatch, **env: str):
    """The job's settings as `load_settings` reads them from these variables."""
    from entrypoint.config.settings import load_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def job_trainer(cache: Path, output: Path, max_samples: int, **settings: str) -> tuple[Any, Any, Any]:
    """The job's own trainer, for tests that drive it step by step: the settings as load_settings reads them from these
    DPO_* values, the model loaded (DPO_QUANTIZATION) and the trainer built as job.train does, on the first
    `max_samples` pairs (no eval split). Returns (trainer, model_ref, prepared data)."""
    from entrypoint.config.settings import load_settings
    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.training.trainer import build_trainer, dpo_config

    with pytest.MonkeyPatch.context() as patch:
        for key, value in job_env(cache, output, **settings).items():
            if key.startswith("DPO_"):
                patch.setenv(key, value)
        config = load_settings()
    ref = resolve_model(config.model, "auto", None, cache)
    processor = load_processor(ref)
    args = dpo_config(config, output / "checkpoints", "test")
    data = prepare_pairs(config, cache, processor, ref.family, args.max_length, max_samples=max_samples)
    trainer = build_trainer(config, load_model(ref, config.quantization, processor=processor), ref.family, processor,
                            data.train, None, args)
    return trainer, ref, data


def error_from(monkeypatch, **env: str) -> str:
    """The ConfigError these variables give."""
    from entrypoint.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        settings_from(monkeypatch, **env)
    return str(caught.value)


def start_job(env: dict[str, str]) -> subprocess.Popen:
    """`python -m entrypoint` in the background, to be killed or signalled mid-run."""
    return subprocess.Popen([sys.executable, "-m", "entrypoint"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    """Until `path` exists (e.g. a checkpoint's completion marker), while the job still runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A fresh moto S3 server on loopback; boto3 (and the job's cached client) pointed at it. Yields its URL."""
    from entrypoint.remote import s3
    from s3_server import moto_server

    with moto_server() as url:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": url}.items():
            monkeypatch.setenv(key, value)
        s3.client.cache_clear()
        yield url
        s3.client.cache_clear()


@pytest.fixture
def bucket(s3_endpoint):
    """A boto3 client of the `s3_endpoint` server, which holds a bucket "data"."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="data")
    return client
