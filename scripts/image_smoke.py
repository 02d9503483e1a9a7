"""Build the job's image from the Dockerfile as shipped and run the demo in it: `make image-smoke`.

Stages, each timed:
1. engine  - a Docker engine that answers; started here (as root) when none runs, and then stopped at the end.
2. base    - the Dockerfile's pinned base image, pulled; where no registry can be reached, a stand-in
             (below) built once and reused.
3. build   - the Dockerfile on disk, with only its FROM line swapped when the stand-in is used (the swapped
             text goes through stdin; the file is not touched).
4. user    - the image runs as uid 1000, not root, and its entrypoint is the launcher (`python -m entrypoint.launch`).
5. compiler - what Triton needs to build a kernel's launcher on a GPU (TRL's log-prob kernels): as uid 1000, with
             no network, Triton's own build function (triton.runtime.build.compile_module_from_src) compiles a C
             extension against Python.h and Triton's cuda.h, into Triton's cache on the /cache volume, and loads it.
6. refuse  - an output folder that uid 1000 cannot write (mode 555): exit 2 and one line naming it, no traceback.
7. demo    - the embedded default (tiny model, bundled sample) through the entrypoint, with no network, as uid 1000,
             into volumes.
8. outputs - checked from outside the image: adapter/, metrics.json, config.json, data_report.json,
             manifest.json, every file's size and sha256 as the manifest records them, all written by uid 1000, and
             the manifest's provenance carrying requirements.lock's sha256 (the installed package's copy).

The stand-in: Debian bookworm made with debootstrap from the Debian mirror apt uses, with Python 3.11 (the pinned
base's minor version, with its headers, as the python image has them) in a venv on PATH, and the host's extra CA
certificates (package traffic may pass a TLS-intercepting proxy). It stands in for `python:3.11.x-slim-bookworm`
only where that cannot be pulled: same Debian release, same Python minor version, `python` and `pip` on PATH.

Needs root (or a running engine) and, for the stand-in, `debootstrap`: `apt-get install -y docker.io debootstrap`.
Standard library only, so any python3 runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = "dpo-job-standin-base:python3.11-bookworm-2"  # bump when build_standin changes: a stale one is not reused
STANDIN_PYTHON = "/opt/python"  # the venv the stand-in puts on PATH
JOB_UID = 1000  # the Dockerfile's USER
ENTRYPOINT = ["python", "-m", "entrypoint.launch"]
# A C extension built the way Triton builds its CUDA launcher: Triton's function, Python.h, Triton's own cuda.h
# (CUDA_VERSION proves it was found). No libcuda is linked: there is no GPU here, and the launcher's link is the
# driver's business, not the image's.
TRITON_C = r"""
#include <Python.h>
#include <cuda.h>
static PyObject* cuda_version(PyObject* self, PyObject* args) { return PyLong_FromLong(CUDA_VERSION); }
static PyMethodDef methods[] = {{"cuda_version", cuda_version, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dpo_triton_check", NULL, -1, methods};
PyMODINIT_FUNC PyInit_dpo_triton_check(void) { return PyModule_Create(&module); }
"""
TRITON_CHECK = f"""
import os, pathlib, shutil
import triton
from triton.runtime.build import compile_module_from_src
include = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "include"
module = compile_module_from_src({TRITON_C!r}, "dpo_triton_check", include_dirs=[str(include)])
cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
print(f"{{cc}} built {{module.__name__}} (CUDA_VERSION {{module.cuda_version()}}) with triton {{triton.__version__}} "
      f"as uid {{os.getuid()}}, cache {{os.environ.get('TRITON_CACHE_DIR')}}")
"""
RUN_FILES = ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "metrics.json", "config.json",
             "data_report.json", "manifest.json")
# The demo's settings (the Makefile's DEMO_ENV, without wandb: the image's job reports to no tracker by default).
DEMO_ENV = {"DPO_MODEL": "tiny:llava-next", "DPO_DATASET": "sample:rlaif-v", "DPO_MAX_SAMPLES": "64",
            "DPO_MAX_STEPS": "40", "DPO_PER_DEVICE_TRAIN_BATCH_SIZE": "4", "DPO_GRADIENT_ACCUMULATION_STEPS": "1",
            "DPO_LEARNING_RATE": "5e-3", "DPO_LOGGING_STEPS": "5", "DPO_SAVE_STEPS": "20",
            "DPO_EVAL_DATASET": "sample:pope", "DPO_MAX_EVAL_PAIRS": "24", "DPO_RUN_NAME": "image-smoke"}


class SmokeFailed(Exception):
    pass


def sh(*command: str, check: bool = True, capture: bool = False, stdin: str | None = None,
       timeout: float | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, input=stdin, text=True, capture_output=capture, timeout=timeout, check=False)
    if check and result.returncode != 0:
        detail = (result.stderr or "")[-3000:] if capture else ""
        raise SmokeFailed(f"`{' '.join(command)}` exited with {result.returncode}\n{detail}")
    return result


def engine_answers() -> bool:
    return shutil.which("docker") is not None and sh("docker", "info", check=False, capture=True).returncode == 0


class Engine:
    """The Docker engine: the one running, or one started here (as root) and stopped again at the end, so that
    nothing outlives the smoke test that it started."""

    def __init__(self, work: Path):
        self.log = work / "dockerd.log"
        self.started: subprocess.Popen | None = None

    def start(self) -> str:
        if engine_answers():
            return "running"
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            raise SmokeFailed("no Docker engine answers, and none can be started here: as root, "
                              "`apt-get install -y docker.io debootstrap`, then run this again")
        # No bridge and no iptables: builds use the host's network (--network host), the demo runs with none.
        with self.log.open("w") as log:
            self.started = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        for _ in range(120):
            if engine_answers():
                return f"started (log: {self.log})"
            if self.started.poll() is not None:
                break
            time.sleep(0.5)
        raise SmokeFailed(f"dockerd did not answer within 60 s; its log: {self.log}")

    def stop(self) -> None:
        if self.started is not None and self.started.poll() is None:
            self.started.terminate()
            try:
                self.started.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.started.kill()


def pinned_base(dockerfile: str) -> str:
    [base] = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    return base


def image_exists(ref: str) -> bool:
    return sh("docker", "image", "inspect", ref, check=False, capture=True).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 sources or sources.list), for debootstrap."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        if path.is_file():
            for uri in re.findall(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", path.read_text(), re.MULTILINE):
                if not uri.rstrip("/").endswith("-security"):
                    return uri
    return "http://deb.debian.org/debian"


def build_standin(work: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise SmokeFailed("the pinned base cannot be pulled and there is no debootstrap to make a stand-in: "
                          "`apt-get install -y debootstrap` (as root)")
    rootfs = Path(tempfile.mkdtemp(prefix="standin-", dir=work))
    try:
        sh("debootstrap", "--variant=minbase",
           "--include=python3.11,python3.11-venv,python3-venv,libpython3.11-dev,ca-certificates",
           "bookworm", str(rootfs), debian_mirror(), capture=True)
        extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        for cert in extra_cas:
            shutil.copy(cert, rootfs / "usr/local/share/ca-certificates" / cert.name)
        sh("chroot", str(rootfs), "update-ca-certificates", capture=True)
        sh("chroot", str(rootfs), "python3.11", "-m", "venv", STANDIN_PYTHON, capture=True)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        import_rootfs(rootfs)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def import_rootfs(rootfs: Path) -> None:
    """`tar | docker import`, with the venv first on PATH as the python image has its Python."""
    path = f"ENV PATH={STANDIN_PYTHON}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    result = subprocess.run(["docker", "import", "--change", path, "-", STANDIN], stdin=tar.stdout,
                            capture_output=True, text=True, check=False)
    tar.stdout.close()
    if tar.wait() != 0 or result.returncode != 0:
        raise SmokeFailed(f"docker import of the stand-in failed: {result.stderr[-2000:]}")


def base_image(dockerfile: str, work: Path) -> tuple[str, str]:
    """(the base to build on, how it was had)."""
    pinned = pinned_base(dockerfile)
    if image_exists(pinned):
        return pinned, "pinned, present"
    if sh("docker", "pull", pinned, check=False, capture=True, timeout=300).returncode == 0:
        return pinned, "pinned, pulled"
    if image_exists(STANDIN):
        return STANDIN, f"{pinned} cannot be pulled; stand-in {STANDIN} reused"
    build_standin(work)
    return STANDIN, f"{pinned} cannot be pulled; stand-in {STANDIN} built"


def on_base(dockerfile: str, base: str) -> str:
    """The Dockerfile with only its FROM line's image replaced by `base`."""
    return re.sub(r"^(FROM\s+)\S+", lambda m: m.group(1) + base, dockerfile, count=1, flags=re.MULTILINE)


def build(image: str, dockerfile: str, base: str) -> None:
    text = on_base(dockerfile, base)
    version = re.search(r'^version = "(.*)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    revision = sh("git", "-C", str(ROOT), "rev-parse", "HEAD", check=False, capture=True).stdout.strip()
    sh("docker", "build", "--network", "host", "-t", image, "--build-arg", f"VERSION={version}",
       "--build-arg", f"REVISION={revision or 'unknown'}", "-f", "-", str(ROOT), stdin=text)


def check_user(image: str) -> str:
    configured = sh("docker", "image", "inspect", "-f", "{{.Config.User}}", image, capture=True).stdout.strip()
    uid = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u",
             capture=True).stdout.strip()
    if uid != str(JOB_UID):
        raise SmokeFailed(f"the image runs as uid {uid} (USER {configured!r}), not {JOB_UID}")
    entrypoint = json.loads(sh("docker", "image", "inspect", "-f", "{{json .Config.Entrypoint}}", image,
                               capture=True).stdout)
    if entrypoint != ENTRYPOINT:
        raise SmokeFailed(f"the image's entrypoint is {entrypoint}, not the launcher {ENTRYPOINT}")
    return f"USER {configured}, id -u {uid}, entrypoint {' '.join(entrypoint)}"


def check_compiler(image: str) -> str:
    """Triton's C build, as the job's user, with no network (module docstring, stage 5)."""
    result = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", TRITON_CHECK,
                check=False, capture=True, timeout=300)
    if result.returncode != 0:
        raise SmokeFailed(f"Triton cannot build a C extension in the image:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def volume(path: Path) -> Path:
    """A folder to mount that the job (uid 1000) may write: given to it as root, open to all otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, JOB_UID, JOB_UID)
    else:
        path.chmod(0o777)
    return path


def run_job(image: str, outputs: Path, cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    return sh("docker", "run", "--rm", "--network", "none", "-v", f"{outputs}:/outputs", "-v", f"{cache}:/cache",
              *env_args, image, check=False, capture=True, timeout=1200)


def check_refused(image: str, work: Path) -> str:
    """An output volume uid 1000 cannot write: exit 2 with one line naming it, before any model is loaded."""
    locked = work / "locked-outputs"
    locked.mkdir()
    locked.chmod(0o555)  # writable by root alone, whoever owns it
    result = run_job(image, locked, volume(work / "cache"), DEMO_ENV)
    if result.returncode != 2 or "Traceback" in result.stderr or "DPO_OUTPUT_DIR" not in result.stderr:
        raise SmokeFailed(f"an unwritable output folder gave exit {result.returncode}, not 2 with a line naming "
                          f"DPO_OUTPUT_DIR:\n{result.stderr[-2000:]}")
    return [line for line in result.stderr.splitlines() if line.startswith("error:")][-1]


def check_outputs(run_dir: Path, owner: int | None = JOB_UID) -> str:
    """The run directory as a pipeline finds it on the host: the contract's files, each as manifest.json records
    it, all written by `owner` (the image's user)."""
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise SmokeFailed(f"the run directory {run_dir} lacks {', '.join(missing)}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for entry in manifest["files"]:
        path = run_dir / entry["path"]
        if path.stat().st_size != entry["size"] or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            raise SmokeFailed(f"{entry['path']} does not match manifest.json")
    owners = {p.stat().st_uid for p in run_dir.rglob("*")}
    if owner is not None and owners != {owner}:
        raise SmokeFailed(f"the run directory holds files of uid(s) {sorted(owners)}, not only {owner}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lock = ((manifest.get("provenance") or {}).get("code") or {}).get("requirements_lock") or {}
    if lock.get("sha256") != hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest():
        raise SmokeFailed(f"manifest.json's provenance records requirements.lock as {lock}, not this checkout's")
    return (f"{len(manifest['files'])} files match manifest.json; {metrics['train']['global_step']} steps; "
            f"written by uid {', '.join(map(str, sorted(owners)))}; requirements.lock {lock['sha256'][:12]}")


def image_size(image: str) -> str:
    size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image, capture=True).stdout)
    return f"{size / 1e9:.2f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="dpo-job:smoke", help="the tag to build")
    parser.add_argument("--prebuilt", action="store_true",
                        help="check --image as it is (built elsewhere, e.g. by the image workflow): no base, no build")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "image-smoke",
                        help="where the volumes and logs go (emptied first)")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dockerfile = (ROOT / "Dockerfile").read_text()
    times: list[tuple[str, float, str]] = []

    def stage(name: str, action) -> object:
        print(f"image-smoke: {name} ...", flush=True)
        started = time.monotonic()
        outcome = action()
        said = outcome if isinstance(outcome, str) else outcome[1] if isinstance(outcome, tuple) else ""
        times.append((name, time.monotonic() - started, said))
        print(f"image-smoke: {name} done in {times[-1][1]:.1f} s  {times[-1][2]}", flush=True)
        return outcome

    engine = Engine(work)
    try:
        stage("engine", engine.start)
        if not args.prebuilt:
            base = stage("base", lambda: base_image(dockerfile, work))[0]
            stage("build", lambda: build(args.image, dockerfile, base) or f"{args.image}, {image_size(args.image)}")
        stage("user", lambda: check_user(args.image))
        stage("compiler", lambda: check_compiler(args.image))
        stage("refuse", lambda: check_refused(args.image, work))
        outputs = volume(work / "outputs")

        def demo() -> str:
            result = run_job(args.image, outputs, volume(work / "cache"), DEMO_ENV)
            (work / "demo.log").write_text(result.stderr + result.stdout)
            if result.returncode != 0:
                raise SmokeFailed(f"the demo in the image exited with {result.returncode}:\n{result.stderr[-3000:]}")
            launched = [line for line in result.stderr.splitlines() if line.startswith("launch: ")]
            if not launched:
                raise SmokeFailed("the demo did not go through the launcher (no `launch:` line in its log)")
            return f"exit 0, --network none, {launched[0]}, log {work / 'demo.log'}"
        stage("demo", demo)
        stage("outputs", lambda: check_outputs(outputs))
    except SmokeFailed as exc:
        print(f"image-smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.stop()
    print("image-smoke: passed; stage times:")
    for name, seconds, _ in times:
        print(f"  {name:<8} {seconds:7.1f} s")
    print(f"  {'total':<8} {sum(s for _, s, _ in times):7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
