"""The image: hadolint passes, and it installs and runs exactly what the tests exercise.

These checks read the Dockerfile; `make image-smoke` (scripts/image_smoke.py, run by .ci/run after the suite)
builds it and runs the demo in it. The lock it installs is the one tests/test_project.py checks the test venv
against, and its ENTRYPOINT is the command tests/conftest.py runs for every end-to-end test. The smoke script's
own logic (the FROM swap, the check of the run directory from outside) is tested at the end of this file.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                "AWS_SESSION_TOKEN")


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", re.sub(r"^\s*#.*\n", "", DOCKERFILE, flags=re.M))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def args_of(kind: str) -> list[str]:
    return [arg for k, arg in instructions() if k == kind]


def index_of(kind: str, contains: str) -> int:
    return next(i for i, (k, arg) in enumerate(instructions()) if k == kind and contains in arg)


def test_hadolint_passes_ignoring_only_the_pin_of_the_compiler_packages():
    """The one rule set aside is DL3008 (pin apt packages' versions), for gcc and libc6-dev alone: libc6-dev must be
    the base's libc6 version, which the base's Debian point release decides (a pin would break at the next one)."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert re.findall(r"hadolint ignore=(\S+)", DOCKERFILE) == ["DL3008"]
    ignored = DOCKERFILE.split("hadolint ignore=DL3008", 1)[1].split("\n\n", 1)[0]
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in ignored
    assert not (ROOT / ".hadolint.yaml").exists()


def test_the_base_is_pinned_by_tag_and_digest():
    [base] = args_of("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base)


def test_image_installs_the_tested_lock_then_the_project_without_dependencies():
    runs = args_of("RUN")
    lock = [r for r in runs if "-r requirements.lock" in r]
    assert lock and "--require-hashes" in lock[0] and "--no-deps" in lock[0]
    project = [r for r in runs if re.search(r"pip install --no-deps .*(\s)\.(\s|$)", r)]
    assert project and index_of("RUN", "requirements.lock") < index_of("RUN", project[0])
    assert not any(re.search(r"pip install(?!.*(-r requirements\.lock|\s\.(\s|$)))", r) for r in runs), \
        "every package comes from the lock"


def test_image_runs_the_launcher_which_runs_what_the_end_to_end_tests_run(monkeypatch):
    """The entrypoint is the launcher; on one GPU or none it runs the job itself, the command every end-to-end test
    runs (with several, one job process per GPU through torchrun: tests/test_machine.py)."""
    from entrypoint.launch import launch_command

    [entrypoint] = args_of("ENTRYPOINT")
    assert entrypoint == '["python", "-m", "entrypoint.launch"]'
    ran = []
    monkeypatch.setattr(conftest.subprocess, "run", lambda command, **kwargs: ran.append(command))
    conftest.run_job({}, "--dry-run")
    assert ran[0] == launch_command({"SKYPILOT_NUM_GPUS_PER_NODE": "1"}, "ddp", ["--dry-run"])
    assert ran[0] == [sys.executable, "-m", "entrypoint", "--dry-run"]


def test_code_changes_do_not_reinstall_the_stack():
    copies = args_of("COPY")
    assert copies[0].split() == ["requirements.lock", "./"]
    assert index_of("RUN", "requirements.lock") < index_of("COPY", "entrypoint")
    assert index_of("LABEL", "revision") > index_of("RUN", "--no-deps --no-build-isolation")  # per-commit metadata


def test_non_root_caches_on_a_volume_no_secrets_and_labels():
    [user] = args_of("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert "HF_HOME=/cache/huggingface" in " ".join(args_of("ENV")) and "/cache" in " ".join(args_of("VOLUME"))
    declared = " ".join(args_of("ENV") + args_of("ARG"))
    assert not any(name in declared for name in SECRET_NAMES)
    labels = " ".join(args_of("LABEL"))
    for key in ("title", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_the_build_context_holds_only_what_the_image_copies():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"

    def sent(path: str) -> bool:  # the last matching rule wins, as in Docker
        keep = False
        for rule in rules:
            negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negated
        return keep

    for copy in args_of("COPY"):
        for source in copy.split()[:-1]:
            assert sent(source), f"{source} is copied but not in the build context"
    assert not sent(".venv") and not sent("outputs") and not sent(".git") and not sent("tests/conftest.py")


def _smoke():
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_smoke", ROOT / "scripts" / "image_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_build_swaps_only_the_base_image():
    smoke = _smoke()
    pinned = smoke.pinned_base(DOCKERFILE)
    assert pinned.startswith("python:3.11") and "@sha256:" in pinned
    swapped = smoke.on_base(DOCKERFILE, smoke.STANDIN)
    changed = [(a, b) for a, b in zip(DOCKERFILE.splitlines(), swapped.splitlines(), strict=True) if a != b]
    assert changed == [(f"FROM {pinned}", f"FROM {smoke.STANDIN}")]
    assert smoke.on_base(DOCKERFILE, pinned) == DOCKERFILE
    # The stand-in stands for the same Debian release and Python minor version as the pinned base.
    assert "bookworm" in pinned and "bookworm" in smoke.STANDIN and "python3.11" in smoke.STANDIN


def test_the_smoke_check_of_the_run_directory_catches_a_changed_or_missing_file(tmp_path):
    from entrypoint.run.outputs import sha256_file, write_manifest

    smoke = _smoke()
    run = tmp_path / "run"
    for name in smoke.RUN_FILES:
        if name != "manifest.json":
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_text("{}" if name.endswith(".json") else "weights")
    (run / "metrics.json").write_text('{"train": {"global_step": 40}}')
    lock = sha256_file(ROOT / "requirements.lock")
    write_manifest(run, "smoke", record={"code": {"requirements_lock": {"path": "requirements.lock", "sha256": lock}}})
    me = os.getuid()
    assert smoke.check_outputs(run, owner=me) == (f"{len(smoke.RUN_FILES) - 1} files match manifest.json; 40 steps; "
                                                  f"written by uid {me}; requirements.lock {lock[:12]}")
    with pytest.raises(smoke.SmokeFailed, match=f"files of uid\\(s\\) \\[{me}\\], not only {me + 1}"):
        smoke.check_outputs(run, owner=me + 1)  # the image's user wrote none of them
    (run / "adapter" / "adapter_model.safetensors").write_text("weighs")  # same size, other bytes
    with pytest.raises(smoke.SmokeFailed, match="adapter/adapter_model.safetensors does not match manifest.json"):
        smoke.check_outputs(run, owner=me)
    (run / "adapter" / "adapter_model.safetensors").write_text("weights")
    write_manifest(run, "smoke", record={"code": {"requirements_lock": {"path": "requirements.lock", "sha256": None,
                                                                        "reason": "no requirements.lock"}}})
    with pytest.raises(smoke.SmokeFailed, match="records requirements.lock as .*, not this checkout's"):
        smoke.check_outputs(run, owner=me)  # an installed package that lost the lock: the image's failure before
    (run / "config.json").unlink()
    with pytest.raises(smoke.SmokeFailed, match="lacks config.json"):
        smoke.check_outputs(run, owner=me)


def test_ci_and_the_image_workflow_run_the_smoke_test_and_push_only_what_passed():
    import yaml

    assert "make image-smoke" in (ROOT / ".ci" / "run").read_text()
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "image.yml").read_text())["jobs"]["build"]["steps"]
    names = [step.get("name", step.get("uses", "")) for step in steps]
    build, smoke, push = (names.index(n) for n in ("Build", next(n for n in names if n.startswith("Smoke")),
                                                   "Push the image that passed"))
    assert build < smoke < push
    assert steps[build]["with"]["load"] is True and steps[build]["with"]["push"] is False
    assert "scripts/image_smoke.py --prebuilt" in steps[smoke]["run"] and "docker push" in steps[push]["run"]
    assert not any(step.get("with", {}).get("push") is True for step in steps)  # nothing pushed before the smoke
