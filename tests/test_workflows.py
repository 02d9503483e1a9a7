"""GitHub workflows: actionlint (with shellcheck) passes; CI runs `make test`; retraining launches
SkyPilot for the right presets, named after the commit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
GITHUB = ["--commit", "0123456789abcdef", "--run-number", "7", "--bucket", "my-dpo-runs"]


def retrain(*args: str, repo: Path = ROOT) -> list[list[str]]:
    """The `sky jobs launch` command lines scripts/retrain.py would run (--dry-run)."""
    command = [sys.executable, str(repo / "scripts" / "retrain.py"), "--dry-run", *GITHUB, *args]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def envs(command: list[str]) -> dict[str, str]:
    return dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "--env")


def test_actionlint_and_shellcheck_pass():
    shellcheck = BIN / "shellcheck"
    workflows = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))  # named: no .git needed to find them
    result = subprocess.run([str(BIN / "actionlint"), f"-shellcheck={shellcheck}", *workflows], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    scripts = [str(p) for p in (ROOT / "scripts").glob("*.sh")] + [str(ROOT / ".ci" / "run")]
    result = subprocess.run([str(shellcheck), *scripts], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_ci_runs_make_test():
    ci = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    steps = [s.get("run", "") for s in ci["jobs"]["test"]["steps"]]
    assert any(s.startswith("make test") for s in steps)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_retrain_triggers_inputs_and_secrets():
    text = (WORKFLOWS / "retrain.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"preset", "dataset", "max_steps"}
    assert triggers["schedule"] and triggers["push"]["paths"] == ["data/datasets.yaml"]
    assert "scripts/retrain.py" in text and "GITHUB_SHA" in text and "github.event.before" in text
    for secret in ("HF_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert f"${{{{ secrets.{secret} }}}}" in text
    presets = yaml.safe_load((ROOT / "data" / "datasets.yaml").read_text())["presets"]
    assert set(triggers["workflow_dispatch"]["inputs"]["preset"]["options"]) == set(presets)
    assert all((ROOT / p["sky"]).is_file() and p["dataset"] for p in presets.values())


def test_dispatch_launches_the_chosen_preset_named_after_the_commit():
    [command] = retrain("--event", "workflow_dispatch", "--preset", "vqa-rad", "--dataset", "",
                        "--max-steps", "50")
    assert command[:6] == ["sky", "jobs", "launch", "--yes", "--detach-run", "--name"]
    assert command[6] == "vqa-rad-01234567-7" and "sky/vqa_rad.yaml" in command
    assert envs(command) == {"RUN_BUCKET": "my-dpo-runs", "DPO_RUN_NAME": "vqa-rad-01234567-7",
                             "DPO_DATASET": "flaviagiammarino/vqa-rad", "DPO_MAX_STEPS": "50"}
    assert command[-4:] == ["--secret", "HF_TOKEN", "--secret", "WANDB_API_KEY"]  # values from the env
    [other] = retrain("--event", "workflow_dispatch", "--preset", "llava-next", "--dataset", "me/my-pairs",
                      "--results-uri", "s3://results/dpo/")
    assert envs(other)["DPO_DATASET"] == "me/my-pairs"
    assert envs(other)["DPO_S3_URI"] == "s3://results/dpo/llava-next-01234567-7"


def test_schedule_launches_the_scheduled_presets():
    presets = yaml.safe_load((ROOT / "data" / "datasets.yaml").read_text())["presets"]
    commands = retrain("--event", "schedule")
    assert [c[6].split("-0123")[0] for c in commands] == [n for n, p in presets.items() if p.get("scheduled")]


def test_a_manifest_change_retrains_only_the_changed_presets(tmp_path):
    """On push, scripts/retrain.py compares the manifest with the commit before (a throwaway repo here)."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "scripts").mkdir()
    (repo / "scripts" / "retrain.py").write_text((ROOT / "scripts" / "retrain.py").read_text())
    manifest = (ROOT / "data" / "datasets.yaml").read_text()
    (repo / "data" / "datasets.yaml").write_text(manifest)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    before = git("rev-parse", "HEAD")
    changed = manifest.replace("dataset: flaviagiammarino/vqa-rad", "dataset: me/vqa-rad-v2")
    assert changed != manifest
    (repo / "data" / "datasets.yaml").write_text(changed + "# a comment only\n")
    git("commit", "-q", "-am", "two")

    [command] = retrain("--event", "push", "--before", before, repo=repo)
    assert envs(command)["DPO_DATASET"] == "me/vqa-rad-v2" and "sky/vqa_rad.yaml" in command
    assert len(retrain("--event", "push", "--before", "0" * 40, repo=repo)) == 3  # a new branch: everything


def test_retrain_needs_the_bucket():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "retrain.py"), "--event", "schedule", "--commit",
                             "abc", "--run-number", "1", "--dry-run"], env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "RUN_BUCKET" in result.stderr


@pytest.mark.parametrize("preset", ["llava-next", "vqa-rad", "idefics2"])
def test_every_dispatch_choice_is_in_the_manifest(preset):
    [command] = retrain("--event", "workflow_dispatch", "--preset", preset)
    assert (ROOT / command[7]).is_file()
