"""The project's own promises: the README is current, the test env runs the locked versions."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from entrypoint import reference

ROOT = Path(__file__).resolve().parents[1]
KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "wandb",
                "huggingface-hub", "boto3", "pillow", "pydantic-settings")


def locked_versions(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", path.read_text(), flags=re.MULTILINE))


def test_readme_opens_with_the_two_setup_commands():
    commands = re.findall(r"^(make \w+)", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    assert commands[:2] == ["make demo", "make test"]


@pytest.mark.parametrize(("start", "end", "generate"), [
    (reference.START, reference.END, reference.markdown),  # the settings, from their declaration
    (reference.TOKENS_START, reference.TOKENS_END, reference.image_token_markdown),  # measured, published processors
    (reference.FORMATS_START, reference.FORMATS_END, reference.formats_markdown),  # the format registry
    (reference.PRESETS_START, reference.PRESETS_END, reference.presets_markdown),  # the preset files
], ids=["settings", "image-tokens", "formats", "presets"])
def test_readme_generated_blocks_are_current(start, end, generate):
    block = (ROOT / "README.md").read_text().split(start, 1)[1].split(end, 1)[0]
    assert block == "\n" + generate(), "README is stale: run `make docs`"


@pytest.mark.parametrize("package", KEY_PACKAGES)
def test_installed_versions_are_the_locked_ones(package):
    locked = locked_versions(ROOT / "requirements.lock")
    installed = version(package).split("+")[0]  # the CPU torch build is 2.13.0+cpu
    assert installed == locked[package]


def test_requirements_in_pins_are_what_the_lock_resolved():
    pinned = locked_versions(ROOT / "requirements.in")
    locked = locked_versions(ROOT / "requirements.lock")
    assert pinned and all(locked[name] == ver for name, ver in pinned.items())
    hashed = re.findall(r"^[a-z0-9][^\n]*==[^\n]*\\\n\s+--hash=sha256:", (ROOT / "requirements.lock").read_text(),
                        flags=re.MULTILINE)
    assert len(hashed) == len(locked)  # every pin carries its hashes


def test_code_passes_ruff():
    import subprocess
    import sys

    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "entrypoint", "tests", "bench", "scripts"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
