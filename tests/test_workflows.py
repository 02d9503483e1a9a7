"""GitHub workflows: actionlint passes; CI runs the README's test command; retraining launches SkyPilot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def test_actionlint_passes():
    actionlint = Path(sys.executable).parent / "actionlint"
    result = subprocess.run([str(actionlint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_ci_runs_make_test():
    ci = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    steps = [s.get("run", "") for s in ci["jobs"]["test"]["steps"]]
    assert any(s.startswith("make test") for s in steps)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_retrain_triggers_inputs_secrets_and_run_name():
    text = (WORKFLOWS / "retrain.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"preset", "dataset", "max_steps"}
    assert triggers["schedule"] and triggers["push"]["paths"] == ["data/datasets.yaml"]
    assert "sky jobs launch" in text and "GITHUB_SHA" in text
    for secret in ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert f"secrets.{secret}" in text
    presets = yaml.safe_load((ROOT / "data" / "datasets.yaml").read_text())["presets"]
    assert set(triggers["workflow_dispatch"]["inputs"]["preset"]["options"]) == set(presets)
    assert all((ROOT / p["sky"]).is_file() for p in presets.values())
