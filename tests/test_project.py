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


def test_readme_settings_table_is_generated_from_the_declaration():
    text = (ROOT / "README.md").read_text()
    block = text.split(reference.START, 1)[1].split(reference.END, 1)[0]
    assert block == "\n" + reference.markdown(), "README is stale: run `make docs`"


def test_readme_image_token_table_is_measured_with_the_published_processors():
    text = (ROOT / "README.md").read_text()
    block = text.split(reference.TOKENS_START, 1)[1].split(reference.TOKENS_END, 1)[0]
    assert block == "\n" + reference.image_token_markdown(), "README is stale: run `make docs`"


def test_readme_formats_table_is_generated_from_the_registry():
    text = (ROOT / "README.md").read_text()
    block = text.split(reference.FORMATS_START, 1)[1].split(reference.FORMATS_END, 1)[0]
    assert block == "\n" + reference.formats_markdown(), "README is stale: run `make docs`"


def test_readme_presets_table_is_generated_from_the_preset_files():
    text = (ROOT / "README.md").read_text()
    block = text.split(reference.PRESETS_START, 1)[1].split(reference.PRESETS_END, 1)[0]
    assert block == "\n" + reference.presets_markdown(), "README is stale: run `make docs`"


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
