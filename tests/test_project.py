"""The project's own promises: the README is current, the test env runs the locked versions."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from entrypoint import docs

ROOT = Path(__file__).resolve().parents[1]
KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "wandb",
                "huggingface-hub", "boto3", "pillow", "pydantic-settings")


def locked_versions(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", path.read_text(), flags=re.MULTILINE))


def test_readme_opens_with_the_two_setup_commands():
    commands = re.findall(r"^(make \w+)", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    assert commands[:2] == ["make demo", "make test"]


@pytest.mark.parametrize(("start", "end", "generate"), [
    (docs.START, docs.END, docs.markdown),  # the settings, from their declaration
    (docs.TOKENS_START, docs.TOKENS_END, docs.image_token_markdown),  # measured, published processors
    (docs.FORMATS_START, docs.FORMATS_END, docs.formats_markdown),  # the format registry
    (docs.PRESETS_START, docs.PRESETS_END, docs.presets_markdown),  # the preset files
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


def test_imports_follow_the_stages():
    """import-linter's contracts in pyproject.toml: each folder imports only the ones below it, and no modules of
    a folder import each other in a circle. An upward import or a circle fails here, naming the import chain."""
    import subprocess
    import sys

    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_no_import_circle_among_the_modules():
    """Beyond what the contracts check folder by folder: no two modules anywhere in the package reach each other
    through imports, function-level ones included."""
    import grimp

    graph = grimp.build_graph("entrypoint")
    modules = sorted(graph.modules)
    circles = [(a, b) for i, a in enumerate(modules) for b in modules[i + 1:]
               if graph.find_shortest_chain(a, b) and graph.find_shortest_chain(b, a)
               and not (a.startswith(b + ".") or b.startswith(a + "."))]
    assert not circles, circles[:5]
