"""SkyPilot YAMLs: valid for skypilot's own loader (offline), plus what that loader does not check."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import ROOT
from entrypoint.errors import EXIT_CONFIG, EXIT_PREEMPTED

SKY_PYTHON = ROOT / ".venv-sky" / "bin" / "python"
YAMLS = sorted((ROOT / "sky").glob("*.yaml"))
KNOWN_GPUS = {"A100", "A100-80GB", "H100", "H200", "L4", "L40S", "A10G"}
JOB_RECOVERY_KEYS = {"strategy", "max_restarts_on_errors", "recover_on_exit_codes"}
SECRETS = {"HF_TOKEN", "WANDB_API_KEY"}


def accelerators(task: dict) -> dict[str, int]:
    """`{A100:1, H100:1}` reads in YAML as keys "A100:1", "H100:1" (SkyPilot parses them itself)."""
    return {key.split(":")[0]: int(key.split(":")[1]) for key in task["resources"]["accelerators"]}


def test_there_is_a_main_task_a_multinode_one_and_the_presets():
    assert {p.name for p in YAMLS} >= {"llava_next.yaml", "llava_next_multinode.yaml", "vqa_rad.yaml",
                                      "idefics2.yaml"}


@pytest.mark.skipif(not SKY_PYTHON.exists(), reason="run `make install` to create .venv-sky")
def test_skypilot_loads_every_yaml_and_rejects_a_typo(tmp_path):
    code = ("import sys, sky\nfor path in sys.argv[1:]:\n    task = sky.Task.from_yaml(path)\n"
            "    print(path, task.num_nodes)\n")
    result = subprocess.run([str(SKY_PYTHON), "-c", code, *map(str, YAMLS)], env={"HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "sky" / "llava_next.yaml").read_text().replace("use_spot:", "use_spott:"))
    rejected = subprocess.run([str(SKY_PYTHON), "-c", code, str(typo)], env={"HOME": str(tmp_path)},
                              capture_output=True, text=True, timeout=120, check=False)
    assert rejected.returncode != 0 and "use_spott" in rejected.stderr


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_the_project_checks_the_loader_lacks(path, monkeypatch):
    from entrypoint.settings import load_settings

    text = path.read_text()
    task = yaml.safe_load(text)
    assert re.search(r"^#\s+sky (jobs )?launch .*" + re.escape(f"sky/{path.name}"), text, flags=re.M)
    resources = task["resources"]
    assert resources["use_spot"] is True
    gpus = set(accelerators(task))
    assert gpus <= KNOWN_GPUS and {"A100", "A100-80GB", "H100"} <= gpus
    recovery = resources["job_recovery"]
    assert set(recovery) <= JOB_RECOVERY_KEYS
    assert EXIT_PREEMPTED in recovery["recover_on_exit_codes"] and EXIT_CONFIG not in recovery[
        "recover_on_exit_codes"]
    assert set(task["secrets"]) == SECRETS and all(v is None for v in task["secrets"].values())
    mount = task["file_mounts"]["/checkpoints"]
    assert mount["mode"] in ("MOUNT", "MOUNT_CACHED")
    for variable in re.findall(r"\$\{(\w+)\}", yaml.safe_dump(task["file_mounts"])):
        assert variable in task["envs"]
    assert "DPO_CHECKPOINT_DIR=/checkpoints/" in task["run"] and "entrypoint.launch" in task["run"]
    for key, value in task["envs"].items():  # every DPO_* is a setting the job accepts, with a valid value
        if key.startswith("DPO_"):
            monkeypatch.setenv(key, str(value))
    load_settings()


def test_multinode_task_spans_nodes_with_several_gpus_each():
    task = yaml.safe_load((ROOT / "sky" / "llava_next_multinode.yaml").read_text())
    assert task["num_nodes"] >= 2 and all(count > 1 for count in accelerators(task).values())
