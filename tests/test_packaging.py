"""The package pip installs: its wheel requires every package the code imports, within ranges that admit the
locked versions, and a plain `pip install` of the checkout into a fresh venv gives a job that runs.

The image and the SkyPilot set-up install requirements.lock (hashed) and then the project with --no-deps; these
tests keep `pip install <checkout>` working for everyone else.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "entrypoint")  # what the Dockerfile copies to build the project


def locked(path: Path) -> dict[str, str]:
    return {canonicalize_name(name): ver for name, ver in
            re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", path.read_text(), flags=re.MULTILINE)}


def runtime_imports() -> dict[str, str]:
    """Top-level packages imported anywhere in entrypoint/ (module level or inside functions), outside the standard
    library and the project: import name -> a file that imports it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "entrypoint").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "entrypoint":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def source_copy(tmp: Path) -> Path:
    """The files the project is built from, copied: building writes build/ and *.egg-info beside them."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel_requirements(tmp_path_factory) -> list[Requirement]:
    """Requires-Dist of the wheel pip builds from the checkout (setuptools, as the image builds it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_copy(tmp)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w",
                    str(tmp / "dist")], check=True, capture_output=True, text=True, timeout=300)
    [wheel] = (tmp / "dist").glob("dpo_job-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
            if line.startswith("Requires-Dist:")]


def test_the_wheel_requires_every_package_the_code_imports(wheel_requirements):
    required = {canonicalize_name(r.name) for r in wheel_requirements}
    providers = packages_distributions()  # import name -> distributions, from this venv: PIL -> pillow, yaml -> pyyaml
    missing = {}
    for module, where in runtime_imports().items():
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported in {where}) is installed by no distribution here"
        if not dists & required:
            missing[module] = (sorted(dists), where)
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
    assert {"PIL", "yaml", "torch", "trl"} <= set(runtime_imports())  # the scan sees lazy (in-function) imports


def test_every_range_admits_the_locked_version_and_requirements_in_pins_within_them(wheel_requirements):
    lock = locked(ROOT / "requirements.lock")
    for requirement in wheel_requirements:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is required but not in requirements.lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), \
            f"{requirement} does not admit the locked {name}=={lock[name]}"
        assert {s.operator for s in requirement.specifier} == {">=", "<"}, f"{requirement}: not a range"
    declared = {canonicalize_name(r.name) for r in wheel_requirements}
    pins = locked(ROOT / "requirements.in")
    assert pins and set(pins) <= declared  # the tested pins are of declared dependencies
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(map(str, map(Requirement, project))) == sorted(map(str, wheel_requirements))


@pytest.mark.package  # about 70 s: `make package-check`, run by .ci/run after the suite
def test_pip_install_of_the_checkout_into_a_fresh_venv_runs_the_job(tmp_path):
    """A fresh venv (no system site-packages: a missing dependency must fail), torch first as `make install` puts it
    (PyPI's Linux torch is the 3 GB CUDA build: TORCH_INDEX, as CI passes it, points pip at the CPU one), then a plain
    `pip install` of the checkout, which resolves everything else from pyproject.toml's ranges. ~1 minute here."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")

    def pip(*args: str) -> None:
        result = subprocess.run([python, "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                                timeout=900, check=False)
        assert result.returncode == 0, result.stderr[-3000:]

    index = os.environ.get("TORCH_INDEX")
    pip(f"torch=={version('torch')}", *(["--index-url", index] if index else []))
    pip(str(source_copy(tmp_path)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DPO_CACHE_DIR": str(tmp_path / "cache"),
           "DPO_OUTPUT_DIR": str(tmp_path / "out"), "DPO_MODEL": "tiny:llava-next", "DPO_DATASET": "sample:rlaif-v"}
    where = subprocess.run([python, "-c", "import entrypoint; print(entrypoint.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True)
    assert str(venv) in where.stdout  # the installed package, not the checkout
    helped = subprocess.run([python, "-m", "entrypoint", "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert helped.returncode == 0 and "usage: python -m entrypoint" in helped.stdout, helped.stderr[-2000:]
    dry = subprocess.run([python, "-m", "entrypoint", "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # imports torch, transformers, peft, trl, datasets, PIL
    assert dry.returncode == 0 and "dry run: settings, model, data and memory plan are fine" in dry.stderr, \
        dry.stderr[-3000:]
