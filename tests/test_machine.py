"""The machine, checked before anything is loaded: GPUs torch cannot use (an NVIDIA driver older than its CUDA
needs), several GPUs given to one process, /dev/shm too small for NCCL, and the launcher using every GPU.

No GPU here: a fake `nvidia-smi` on PATH answers as a host with an H100 and an R535 driver does, and torch.cuda is
monkeypatched where a test needs torch to see GPUs. Everything else is the real job and launcher.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, job_env, run_job
from entrypoint import machine
from entrypoint.errors import EXIT_CONFIG, ConfigError

H100_R535 = "NVIDIA H100 80GB HBM3, 535.154.05"


@pytest.fixture
def old_driver_host(tmp_path):
    """A PATH whose nvidia-smi lists an H100 on driver 535 (too old for torch's CUDA 13.0 build)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{H100_R535}'\n")
    smi.chmod(0o755)
    return str(bin_dir)


@pytest.fixture
def no_gpu_in_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # the CUDA build torch's PyPI wheel is (this is the CPU one)
    machine.nvidia_smi.cache_clear()
    yield
    machine.nvidia_smi.cache_clear()


@pytest.fixture
def four_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_gpus_torch_cannot_use_are_exit_2_naming_the_driver_found_and_needed(tmp_path, cache_dir, old_driver_host):
    """The job, as a user's first `docker run --gpus all` on an R535 host runs it: exit 2 in seconds, before the
    model is downloaded, not a 7B model trained on the CPU in fp32. DPO_ALLOW_CPU=true runs it there."""
    env = job_env(cache_dir, tmp_path / "run", model="tiny:llava-next", dataset="sample:rlaif-v")
    env["PATH"] = f"{old_driver_host}:{env['PATH']}"
    result = run_job(env, "--dry-run")
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: GPUs are here (nvidia-smi lists 1 GPU (NVIDIA H100 80GB HBM3)) but torch cannot")
    if "CPU build" not in error:  # the CUDA build of torch (the image's): the driver found and the one needed
        assert "needs an NVIDIA driver R580 or newer; this machine has driver 535.154.05" in error
    assert "DPO_ALLOW_CPU=true" in error and "Traceback" not in result.stderr
    env.pop("OMP_NUM_THREADS", None)
    allowed = run_job({**env, "DPO_ALLOW_CPU": "true"}, "--dry-run")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "WARNING entrypoint: DPO_ALLOW_CPU=true: training on the CPU. GPUs are here" in allowed.stderr
    # and, on the CPU, the threads it chose for the tiny model (test_cpu_threads_by_the_models_width: the rule)
    assert "CPU: 1 thread for a 64-wide model (OMP_NUM_THREADS unset; set it to choose" in allowed.stderr


def test_the_driver_message_for_torchs_cuda_build(no_gpu_in_torch, old_driver_host, monkeypatch):
    monkeypatch.setenv("PATH", old_driver_host)
    found = machine.unusable_gpus({})
    assert found == ("GPUs are here (nvidia-smi lists 1 GPU (NVIDIA H100 80GB HBM3)) but torch cannot use them: torch "
                     f"{__import__('torch').__version__} is built for CUDA 13.0, which needs an NVIDIA driver R580 or "
                     "newer; this machine has driver 535.154.05. Update the host's NVIDIA driver to R580 or newer")
    with pytest.raises(ConfigError, match="DPO_ALLOW_CPU=true"):
        machine.check_gpus(allow_cpu=False, environ={})


@pytest.mark.parametrize(("environ", "sign"), [
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, "NVIDIA_VISIBLE_DEVICES=all"),
    ({"SKYPILOT_NUM_GPUS_PER_NODE": "1"}, "SKYPILOT_NUM_GPUS_PER_NODE=1"),
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, None),  # the toolkit's "no GPU for this container"
    ({"SKYPILOT_NUM_GPUS_PER_NODE": "0"}, None),
    ({}, None),
])
def test_signs_of_gpus_without_nvidia_smi(no_gpu_in_torch, monkeypatch, tmp_path, environ, sign):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all: no driver loaded
    assert machine.gpus_expected(environ) == sign
    found = machine.unusable_gpus(environ)
    assert (found is None) == (sign is None)
    if sign:
        assert f"GPUs are here ({sign})" in found and "no NVIDIA driver nvidia-smi can report" in found


def test_several_gpus_for_one_process_are_exit_2_naming_the_launcher(four_gpus):
    """The Trainer counts every visible GPU and TRL refuses nn.DataParallel: that was exit 1 after loading."""
    with pytest.raises(ConfigError, match=r"^4 GPUs are visible to one process: start the job with `python -m "
                                          r"entrypoint.launch`.*CUDA_VISIBLE_DEVICES=0"):
        machine.check_gpus(allow_cpu=False, environ={})
    assert machine.check_gpus(allow_cpu=False, environ={"WORLD_SIZE": "4"}) == []  # under torchrun


def test_a_small_dev_shm_with_several_gpus_is_said_in_one_line(four_gpus, monkeypatch):
    monkeypatch.setattr(machine, "shm_bytes", lambda path="/dev/shm": 64 * 2**20)  # Docker's default
    [line] = machine.check_gpus(allow_cpu=False, environ={"WORLD_SIZE": "4"})
    assert line == ("/dev/shm holds 64 MiB for 4 GPUs: NCCL needs more and fails at its first collective; start "
                    "the container with --ipc=host or --shm-size=16g")
    monkeypatch.setattr(machine, "shm_bytes", lambda path="/dev/shm": 16 * 2**30)
    assert machine.check_gpus(allow_cpu=False, environ={"WORLD_SIZE": "4"}) == []


def test_the_launcher_starts_one_process_per_visible_gpu(four_gpus, monkeypatch, tmp_path):
    """`docker run --gpus all` on a 4-GPU host: the image's entrypoint starts torchrun with 4 workers."""
    from entrypoint import launch

    started = []
    monkeypatch.setattr(launch, "run_workers", lambda command: started.append(command) or 0)
    monkeypatch.setattr(sys, "argv", ["launch"])
    for key, value in job_env(tmp_path, tmp_path / "run").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SKYPILOT_NUM_GPUS_PER_NODE", raising=False)
    assert launch.main() == 0
    [command] = started
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=4" in command
    assert "--standalone" in command and command[-2:] == ["-m", "entrypoint"]


def test_the_launcher_prints_the_reference_whatever_the_settings(tmp_path):
    env = {**job_env(tmp_path, tmp_path / "run"), "DPO_LEARNING_RATE": "-1"}
    result = subprocess.run([sys.executable, "-m", "entrypoint.launch", "--help"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m entrypoint")


@pytest.mark.parametrize(("width", "environ", "threads"), [
    (64, {}, 1),  # the tiny and shapes: models
    (machine.ONE_THREAD_BELOW_WIDTH - 1, {}, 1),
    (machine.ONE_THREAD_BELOW_WIDTH, {}, None),  # torch's default: every core
    (4096, {}, None),
    (64, {"OMP_NUM_THREADS": "2"}, None),  # the user's choice stands
])
def test_cpu_threads_by_the_models_width(width, environ, threads):
    assert machine.cpu_threads(width, environ) == threads


def test_a_gpu_run_leaves_cpu_threads_alone(four_gpus):
    assert machine.cpu_threads(64, {}) is None
