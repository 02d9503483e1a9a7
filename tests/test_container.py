"""The image: hadolint passes, and it installs and runs exactly what the tests exercise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_hadolint_passes_with_no_ignored_rule():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert "hadolint ignore" not in DOCKERFILE and not (ROOT / ".hadolint.yaml").exists()


def test_image_installs_the_tested_lock_and_project_and_runs_the_tested_command():
    steps = instructions()
    runs = [arg for kind, arg in steps if kind == "RUN"]
    assert any("--require-hashes" in r and "-r requirements.lock" in r and "--no-deps" in r for r in runs)
    assert any("install --no-deps" in r and r.rstrip().split("&&")[0].rstrip().endswith(" .") for r in runs)
    # The end-to-end tests run `python -m entrypoint`; so does the container.
    assert ("ENTRYPOINT", '["python", "-m", "entrypoint"]') in steps
    import conftest

    assert '"-m", "entrypoint"' in Path(conftest.__file__).read_text()


def test_the_stack_layer_comes_before_the_code_and_the_user_is_not_root():
    steps = instructions()
    copies = [arg for kind, arg in steps if kind == "COPY"]
    assert copies[0].startswith("requirements.lock")  # code changes do not reinstall the stack
    lock_install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "requirements.lock" in a)
    code_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.startswith("entrypoint"))
    assert lock_install < code_copy
    user = [arg for kind, arg in steps if kind == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert any(k == "ENV" and "HF_HOME=/cache" in a for k, a in steps) and any(k == "VOLUME" for k, _ in steps)
    assert not re.search(r"(HF_TOKEN|WANDB_API_KEY|AWS_SECRET_ACCESS_KEY)\s*=", DOCKERFILE)


def test_the_build_context_holds_only_what_the_image_needs():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*")] == "*" and "!requirements.lock" in ignored and "!entrypoint/" in ignored
