"""The machine the job runs on, as the job checks it before anything is loaded: the GPUs torch can use and the ones it
cannot (a driver too old for torch's CUDA), how many processes they want, shared memory for NCCL, CPU threads.

A leaf like logs.py: the launcher, the job's checks and the run record all ask it. torch is imported inside the
functions, so a bad setting still fails before torch loads.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from entrypoint.errors import ConfigError

# The oldest NVIDIA driver each CUDA major version runs on (minor version compatibility): NVIDIA's table,
# docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html ("CUDA 13.x >= 580, 12.x >= 525,
# 11.x >= 450"). PyPI's torch 2.13 is a CUDA 13.0 build.
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
# NCCL keeps its intra-node buffers in /dev/shm; Docker gives a container 64 MiB of it, which a multi-GPU run
# outgrows at its first collective ("failed to extend /dev/shm"). 1 GiB is a floor, not a recommendation.
SHM_MIN_BYTES = 2**30
NO_GPUS = ("", "void", "none")  # NVIDIA_VISIBLE_DEVICES values that give a container no GPU


@dataclass(frozen=True)
class NvidiaSmi:
    """What nvidia-smi reports: the GPUs it lists and the driver's version."""

    gpus: tuple[str, ...]
    driver: str | None


@functools.cache
def nvidia_smi() -> NvidiaSmi | None:
    """nvidia-smi's GPUs and driver (torch reports neither a driver it cannot use nor its version); None when there
    is no nvidia-smi or it fails (no driver loaded)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    return NvidiaSmi(tuple(row[0] for row in rows), rows[0][1] if rows and len(rows[0]) > 1 else None)


def driver_version() -> str | None:
    """The NVIDIA driver's version (nvidia-smi), None without one."""
    smi = nvidia_smi()
    return smi.driver if smi else None


def gpus_expected(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why this machine seems to have GPUs whether or not torch can use them: nvidia-smi lists some, the container
    was given some (NVIDIA_VISIBLE_DEVICES), or SkyPilot rented some (SKYPILOT_NUM_GPUS_PER_NODE). None: no sign."""
    smi = nvidia_smi()
    if smi and smi.gpus:
        return f"nvidia-smi lists {len(smi.gpus)} GPU{'s' if len(smi.gpus) > 1 else ''} ({smi.gpus[0]})"
    visible = environ.get("NVIDIA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() not in NO_GPUS:
        return f"NVIDIA_VISIBLE_DEVICES={visible}"
    rented = environ.get("SKYPILOT_NUM_GPUS_PER_NODE", "").strip()
    if rented.isdigit() and int(rented) > 0:
        return f"SKYPILOT_NUM_GPUS_PER_NODE={rented}"
    return None


def unusable_gpus(environ: Mapping[str, str] = os.environ) -> str | None:
    """When GPUs are there but torch cannot use them: what was found (the driver, the one torch's CUDA needs) and the
    fix, in one sentence. None when torch has a GPU, or there is no sign of one."""
    import torch

    if torch.cuda.is_available():
        return None
    expected = gpus_expected(environ)
    if expected is None:
        return None
    cuda = torch.version.cuda
    needed = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    driver = driver_version()
    if cuda is None:
        why = f"this torch ({torch.__version__}) is a CPU build"
        fix = "install the CUDA build of requirements.lock (the image has it)"
    else:
        found = f"driver {driver}" if driver else "no NVIDIA driver nvidia-smi can report"
        why = (f"torch {torch.__version__} is built for CUDA {cuda}, which needs an NVIDIA driver R{needed} or newer; "
               f"this machine has {found}") if needed else f"torch {torch.__version__} (CUDA {cuda}) finds no GPU"
        fix = f"update the host's NVIDIA driver to R{needed} or newer" if needed else "check the driver and toolkit"
    return f"GPUs are here ({expected}) but torch cannot use them: {why}. {fix[0].upper()}{fix[1:]}"


def visible_gpus() -> int:
    """GPUs torch can use in this process (CUDA_VISIBLE_DEVICES applied)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def shm_bytes(path: str = "/dev/shm") -> int | None:
    """The size of the shared memory NCCL puts its buffers in; None where there is none."""
    try:
        return shutil.disk_usage(path).total
    except OSError:
        return None


def small_shm(gpus: int, path: str = "/dev/shm") -> str | None:
    """One line when several GPUs share less /dev/shm than NCCL needs (a container's default 64 MiB), with the fix."""
    size = shm_bytes(path)
    if gpus < 2 or size is None or size >= SHM_MIN_BYTES:
        return None
    return (f"{path} holds {size / 2**20:.0f} MiB for {gpus} GPUs: NCCL needs more and fails at its first collective; "
            "start the container with --ipc=host or --shm-size=16g")


def check_gpus(allow_cpu: bool, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Before anything is loaded: exit 2 (ConfigError) when GPUs are here that torch cannot use (unless DPO_ALLOW_CPU:
    a warning), or when one process sees several GPUs (the Trainer would count them all, and TRL refuses
    nn.DataParallel). Returns the warnings to log: the CPU fallback, a /dev/shm too small for NCCL."""
    warnings = []
    unusable = unusable_gpus(environ)
    if unusable and not allow_cpu:
        raise ConfigError(f"{unusable}; or set DPO_ALLOW_CPU=true to train on the CPU (a 7B model takes days there)")
    if unusable:
        warnings.append(f"DPO_ALLOW_CPU=true: training on the CPU. {unusable}")
    gpus, processes = visible_gpus(), int(environ.get("WORLD_SIZE") or "1")
    if gpus > 1 and processes == 1:
        raise ConfigError(f"{gpus} GPUs are visible to one process: start the job with `python -m entrypoint.launch` "
                          "(one process per GPU; the image's entrypoint), or give it one GPU (CUDA_VISIBLE_DEVICES=0)")
    shm = small_shm(gpus) if processes > 1 else None
    return [*warnings, shm] if shm else warnings


# A decoder narrower than this trains on one CPU thread when the user chose none: its ops are too small for a second
# thread to pay for the synchronisation, and on a machine whose cores other work shares a thread waiting for a
# descheduled one loses whole steps (bench/RESULTS.md, the job against `trl dpo`).
ONE_THREAD_BELOW_WIDTH = 1024


def cpu_threads(width: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """The threads torch should use on a CPU for a model `width` wide (its language model's hidden size), when the
    user set none (OMP_NUM_THREADS): 1 below ONE_THREAD_BELOW_WIDTH (the tiny and shapes: models), else torch's
    default (every core). None: leave torch as it is (the user's choice, or a GPU to train on)."""
    import torch

    if environ.get("OMP_NUM_THREADS") or torch.cuda.is_available() or width >= ONE_THREAD_BELOW_WIDTH:
        return None
    return 1


def use_cpu_threads(width: int, environ: Mapping[str, str] = os.environ) -> str | None:
    """Apply `cpu_threads`; returns what was done, for the log."""
    import torch

    threads = cpu_threads(width, environ)
    if threads is None:
        return None
    torch.set_num_threads(threads)
    # and for the OpenMP runtimes not loaded yet, bitsandbytes' CPU kernels among them: with two processes on two
    # cores (two nodes on loopback), their default of a thread a core made each step 7x slower (1.3 s against 0.19)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return (f"CPU: {threads} thread for a {width}-wide model (OMP_NUM_THREADS unset; set it to choose; "
            f"torch's default here: {os.cpu_count()})")
