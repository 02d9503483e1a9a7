"""Start the job on every GPU of every node: `python -m entrypoint.launch` (the image's entrypoint; what sky/*.yaml
run).

One process per GPU. DDP (the default) goes through torchrun; FSDP through `accelerate launch` with the ready
config in entrypoint/accelerate_configs/ (DPO_DISTRIBUTED picks).
Nodes and GPUs come from SkyPilot's variables (SKYPILOT_NODE_IPS, SKYPILOT_NODE_RANK,
SKYPILOT_NUM_NODES, SKYPILOT_NUM_GPUS_PER_NODE); elsewhere (`docker run --gpus all`) it is one node
with every visible GPU. With one process in all (one GPU, or none), the job runs directly; so does `--help`.

Exit codes reach SkyPilot as the job's own: torchrun reports any failed worker as 1, so the launcher
runs it in this process and passes the workers' code on (2: bad setting or input; 3: out of GPU memory; 75:
stopped by SIGTERM after saving, recovered; 76: a restart on a GPU too small for the run, recovered elsewhere).
On SIGTERM (a spot notice) the workers get it too and have SHUTDOWN_TIMEOUT_S to finish the step and save before
they are killed (torchrun's default is 30 s).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from entrypoint.errors import EXIT_CONFIG, EXIT_OUT_OF_MEMORY, EXIT_PREEMPTED, EXIT_RECOVER_ELSEWHERE, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "accelerate_configs"
ACCELERATE_CONFIGS = {"fsdp": "fsdp_qlora.yaml"}
# Strategies DPO_DISTRIBUTED still accepts, to refuse them with why and what to use instead.
REMOVED_STRATEGIES = {
    "deepspeed-zero2": "DeepSpeed ZeRO-2 was removed (it needed the `deepspeed` package, which requirements.lock and "
                       "the image do not have); use DPO_DISTRIBUTED=fsdp (4-bit weights, gradients and optimizer "
                       "state sharded, QLoRA-compatible) or ddp (the default)"}
TORCHRUN = "torch.distributed.run"
ACCELERATE = "accelerate.commands.launch"
PORT = "29500"
SHUTDOWN_TIMEOUT_S = "120"  # AWS gives 2 minutes' notice; GCP and Azure 30 s


def launch_command(environ: dict[str, str], distributed: str, job_args: list[str] | None = None) -> list[str]:
    """The command line for this node; `job_args` go to every `python -m entrypoint` (e.g. --dry-run)."""
    nodes = int(environ.get("SKYPILOT_NUM_NODES") or "1")
    rank = environ.get("SKYPILOT_NODE_RANK") or "0"
    gpus = int(environ.get("SKYPILOT_NUM_GPUS_PER_NODE") or "1")
    main_ip = (environ.get("SKYPILOT_NODE_IPS") or "127.0.0.1").split()[0]
    port = environ.get("MASTER_PORT") or PORT  # torch's own variable; SkyPilot sets none
    job = ["-m", "entrypoint", *(job_args or [])]
    if nodes * gpus == 1:
        return [sys.executable, *job]
    if distributed == "ddp":
        where = ["--standalone"] if nodes == 1 else [  # standalone: a free port, several jobs on one host
            f"--nnodes={nodes}", f"--node_rank={rank}", f"--master_addr={main_ip}", f"--master_port={port}"]
        return [sys.executable, "-m", TORCHRUN, *where, f"--nproc_per_node={gpus}", *job]
    return [sys.executable, "-m", ACCELERATE,
            "--config_file", str(CONFIG_DIR / ACCELERATE_CONFIGS[distributed]),
            "--num_machines", str(nodes), "--machine_rank", rank, "--num_processes", str(nodes * gpus),
            "--main_process_ip", main_ip, "--main_process_port", port, *job]


def check_strategy(distributed: str) -> None:
    """A removed strategy fails here, at start-up, in a second, not after the model is downloaded."""
    if distributed in REMOVED_STRATEGIES:
        raise ConfigError(f"DPO_DISTRIBUTED={distributed}: {REMOVED_STRATEGIES[distributed]}")


def exit_code(worker_codes: Iterable[int]) -> int:
    """The job's exit code from its failed workers' (as torchrun reports them).

    When one worker fails, torchrun stops the others with SIGTERM: they exit 75 (in training) or
    die of the signal, so those two count only when every worker agrees. SkyPilot restarts on 75
    without limit: a worker's bug or bad setting must not turn into 75.
    """
    codes = {EXIT_PREEMPTED if code == -signal.SIGTERM else code for code in worker_codes}
    if len(codes) > 1:
        codes.discard(EXIT_PREEMPTED)
    known = {EXIT_CONFIG, EXIT_OUT_OF_MEMORY, EXIT_PREEMPTED, EXIT_RECOVER_ELSEWHERE}
    return codes.pop() if len(codes) == 1 and codes <= known else 1


def run_workers(command: list[str]) -> int:
    """Run torchrun / accelerate launch in this process, so the workers' exit codes are known here."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
    module, args = command[2], command[3:]
    try:
        if module == TORCHRUN:
            from torch.distributed.run import parse_args, run

            run(parse_args(args))
        else:
            from accelerate.commands.launch import launch_command as accelerate_launch
            from accelerate.commands.launch import launch_command_parser

            accelerate_launch(launch_command_parser().parse_args(args))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        print(f"launch: workers exited with {codes}", file=sys.stderr, flush=True)
        return exit_code(codes)
    except SignalException as exc:  # the workers were sent the same signal and given time to save
        print(f"launch: stopped by {exc.sigval.name}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED if exc.sigval == signal.SIGTERM else 128 + exc.sigval
    return 0


def main() -> int:
    from entrypoint.config.settings import load_settings
    from entrypoint.machine import visible_gpus
    from entrypoint.run.rerun import from_run_argument, start

    if {"--help", "-h"} & set(sys.argv[1:]):  # the reference, whatever the settings say
        os.execv(sys.executable, [sys.executable, "-m", "entrypoint", *sys.argv[1:]])
    try:
        from_run, _ = from_run_argument(sys.argv[1:])
        if from_run:  # the recorded settings (DPO_DISTRIBUTED too), in the environment every worker inherits
            start(from_run)
        settings = load_settings()  # a bad setting stops here, on every node, before any process starts
        check_strategy(settings.distributed)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    environ = dict(os.environ)
    environ.setdefault("SKYPILOT_NUM_GPUS_PER_NODE", str(max(1, visible_gpus())))
    command = launch_command(environ, settings.distributed, sys.argv[1:])
    print("launch:", " ".join(command), file=sys.stderr, flush=True)
    if command[2] == "entrypoint":
        os.execv(command[0], command)  # one process: the job's exit code is the launcher's
    return run_workers(command)


if __name__ == "__main__":
    sys.exit(main())
