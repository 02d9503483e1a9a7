"""SkyPilot YAMLs: valid for skypilot's own loader (offline), plus what that loader does not check.

The loader runs in .venv-sky (skypilot's dependencies conflict with the runtime lock), through the
same function `sky jobs launch --env ...` uses, and reports what it understood as JSON; the checks on
that (GPU names, job_recovery, secrets, DPO_* settings) are the project's.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import ROOT
from entrypoint.errors import EXIT_CONFIG, EXIT_PREEMPTED, EXIT_RECOVER_ELSEWHERE

SKY_PYTHON = ROOT / ".venv-sky" / "bin" / "python"
YAMLS = sorted((ROOT / "sky").glob("*.yaml"))
KNOWN_GPUS = {"A100", "A100-80GB", "H100", "H200", "L4", "L40S", "A10G"}
JOB_RECOVERY_KEYS = {"strategy", "max_restarts_on_errors", "recover_on_exit_codes"}
SECRETS = {"HF_TOKEN", "WANDB_API_KEY"}
BUCKET = "RUN_BUCKET"
SETUP = ROOT / "scripts" / "sky_setup.sh"
IMAGE_VARIANTS = {"llava_next_image.yaml": "llava_next.yaml"}  # runs the CI-built image instead of a venv set-up

LOAD = """
import json, sys
from sky.utils import dag_utils
for path in sys.argv[1:]:
    [task] = dag_utils.load_chain_dag_from_yaml(path, env_overrides=[("RUN_BUCKET", "my-dpo-runs")]).tasks
    print(json.dumps({"path": path, "num_nodes": task.num_nodes, "envs": dict(task.envs),
                      "secrets": sorted(ref.name for ref in task.managed_secret_refs),
                      "resources": [{"accelerators": r.accelerators, "use_spot": r.use_spot,
                                     "job_recovery": r.job_recovery, "disk_size": r.disk_size,
                                     "image_id": r.image_id and list(r.image_id.values())}
                                    for r in task.resources],
                      "workdir": task.workdir,
                      "mounts": {k: [s.name, s.mode.value] for k, s in task.storage_mounts.items()},
                      "setup": task.setup, "run": task.run}))
"""


def sky(code: str, *args: str, home) -> subprocess.CompletedProcess:
    return subprocess.run([str(SKY_PYTHON), "-c", code, *args], env={"HOME": str(home)}, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, dict]:
    """Every YAML as skypilot's loader reads it (HOME in a temp dir: it writes ~/.sky)."""
    assert SKY_PYTHON.exists(), "no .venv-sky: `make install` (which `make test` runs) creates it"  # never a skip
    result = sky(LOAD, *map(str, YAMLS), home=tmp_path_factory.mktemp("home"))
    assert result.returncode == 0, result.stderr[-3000:]
    return {json.loads(line)["path"]: json.loads(line) for line in result.stdout.splitlines()}


def test_there_is_a_main_task_a_multinode_one_and_the_presets():
    assert {p.name for p in YAMLS} >= {"llava_next.yaml", "llava_next_multinode.yaml", "vqa_rad.yaml",
                                      "idefics2.yaml", "rlaif_v_onpolicy.yaml",
                                      "rlaif_v_onpolicy_vllm.yaml"}


def test_the_loader_rejects_a_typo_and_a_missing_bucket(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "sky" / "llava_next.yaml").read_text().replace("use_spot:", "use_spott:"))
    rejected = sky(LOAD, str(typo), home=tmp_path)
    assert rejected.returncode != 0 and "use_spott" in rejected.stderr
    no_bucket = sky("import sky, sys; sky.Task.from_yaml(sys.argv[1])", str(ROOT / "sky" / "llava_next.yaml"),
                    home=tmp_path)
    assert no_bucket.returncode != 0 and f"{BUCKET!r} is None" in no_bucket.stderr  # --env RUN_BUCKET is required


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_the_project_checks_the_loader_lacks(path, loaded, monkeypatch):
    from entrypoint.config.settings import load_settings

    task = loaded[str(path)]
    text = path.read_text()
    assert re.search(rf"^#\s+sky jobs launch sky/{re.escape(path.name)} .*--env {BUCKET}=", text, flags=re.M)
    gpus = {}
    for resources in task["resources"]:  # one entry per accelerator candidate
        assert resources["use_spot"] is True
        gpus.update(resources["accelerators"])
        recovery = resources["job_recovery"]
        assert set(recovery) <= JOB_RECOVERY_KEYS and recovery["max_restarts_on_errors"] == 3  # the README's promise
        assert recovery["recover_on_exit_codes"] == [EXIT_PREEMPTED, EXIT_RECOVER_ELSEWHERE] and EXIT_CONFIG not in \
            recovery["recover_on_exit_codes"]
    assert set(gpus) <= KNOWN_GPUS and {"A100", "A100-80GB", "H100"} <= set(gpus)
    assert set(task["secrets"]) == SECRETS and not SECRETS & set(task["envs"])
    assert task["mounts"] == {"/runs": ["my-dpo-runs", "MOUNT_CACHED"]}
    assert "DPO_CHECKPOINT_DIR=/runs/$DPO_RUN_NAME/" in task["run"] and "DPO_OUTPUT_DIR=/runs/$DPO_RUN_NAME/" in task[
        "run"]
    if path.name in IMAGE_VARIANTS:  # the job comes from the image: nothing set up, the image's Python runs it
        assert task["setup"] is None and task["workdir"] is None
        assert task["run"].strip().endswith("/usr/local/bin/python -m entrypoint.launch")
    else:
        assert task["setup"].strip() == "bash scripts/sky_setup.sh"
        assert task["run"].strip().endswith("~/dpo-venv/bin/python -m entrypoint.launch")
    for key, value in task["envs"].items():  # every DPO_* is a setting the job accepts, with a valid value
        if key.startswith("DPO_"):
            monkeypatch.setenv(key, value)
    load_settings()


def test_multinode_task_spans_nodes_with_several_gpus_each(loaded):
    task = loaded[str(ROOT / "sky" / "llava_next_multinode.yaml")]
    assert task["num_nodes"] >= 2
    assert all(count > 1 for r in task["resources"] for count in r["accelerators"].values())
    assert task["envs"]["DPO_DISTRIBUTED"] == "ddp"


def test_setup_installs_what_the_tests_and_the_image_install():
    """The VMs get the hashed lock and the project, like the Dockerfile, in the Python the lock is for."""
    lines = [line for line in SETUP.read_text().splitlines() if line and not line.startswith("#")]
    assert any("--python 3.11" in line and " venv " in line for line in lines)
    assert any("--require-hashes" in line and "--no-deps" in line and "-r requirements.lock" in line for line in lines)
    assert any("--no-deps" in line and line.rstrip().endswith(" .") for line in lines)
    assert "-m entrypoint" in lines[-1]
    result = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("image", "venv"), IMAGE_VARIANTS.items())
def test_the_image_variant_is_its_venv_task_in_the_image_ci_builds_pinned_by_digest(loaded, image, venv):
    """Everything but where the job comes from is the venv task's: resources, settings, secrets, the bucket."""
    imaged, plain = loaded[str(ROOT / "sky" / image)], loaded[str(ROOT / "sky" / venv)]
    for key in ("envs", "secrets", "mounts", "num_nodes"):
        assert imaged[key] == plain[key], key
    def candidates(task: dict) -> list[str]:  # one per accelerator, in no particular order
        return sorted(json.dumps({k: v for k, v in r.items() if k != "image_id"}, sort_keys=True)
                      for r in task["resources"])

    assert candidates(imaged) == candidates(plain)
    [[image_id]] = {tuple(r["image_id"]) for r in imaged["resources"]}
    workflow = (ROOT / ".github" / "workflows" / "image.yml").read_text()
    assert re.fullmatch(r"docker:ghcr\.io/[a-z0-9._-]+/[a-z0-9._-]+@sha256:[0-9a-f]{64}", image_id)  # by digest
    assert "ghcr.io/" in workflow and "steps.build.outputs.digest" in workflow  # where the digest comes from
    assert plain["run"].replace("~/dpo-venv/bin/python", "/usr/local/bin/python") == imaged["run"]
    text = (ROOT / "sky" / image).read_text()
    # SkyPilot prepares the container with apt-get, as root; NCCL needs more /dev/shm than Docker's 64 MiB
    assert "run_options: [--user=root, --shm-size=16g]" in text



def test_the_vllm_task_serves_where_the_job_samples_with_the_adapters_the_job_loads(loaded, monkeypatch):
    """sky/rlaif_v_onpolicy_vllm.yaml: vLLM, in a venv of its own, listens where DPO_SAMPLER_URL points, takes LoRA
    adapters at run time of at least the job's rank, and is up before the job starts."""
    from entrypoint.config.settings import load_settings

    task = loaded[str(ROOT / "sky" / "rlaif_v_onpolicy_vllm.yaml")]
    envs, run = task["envs"], task["run"]
    for key, value in envs.items():
        if key.startswith("DPO_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()  # the preset's values under the YAML's
    assert settings.sampler == "openai" and settings.rounds > 0
    port = re.fullmatch(r"http://localhost:(\d+)/v1", settings.sampler_url).group(1)
    serve = run[run.index("vllm serve"):run.index("&\n")]
    assert f"--port {port}" in serve and f"localhost:{port}/health" in run and "--enable-lora" in serve
    assert int(re.search(r"--max-lora-rank (\d+)", serve).group(1)) >= settings.lora_r
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in run and "VLLM_GPU_MEMORY_UTILIZATION" in serve
    assert re.fullmatch(r"\d+\.\d+\.\d+", envs["VLLM_VERSION"]) and 'vllm==$VLLM_VERSION' in SETUP.read_text()
    assert run.index("/health") < run.index("entrypoint.launch")
