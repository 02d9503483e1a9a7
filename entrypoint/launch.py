"""Start the job on every GPU of every node: `python -m entrypoint.launch` (used by sky/*.yaml).

One process per GPU. DDP (the default) goes through torchrun; DeepSpeed ZeRO-2 and FSDP through
`accelerate launch` with the ready configs in entrypoint/accelerate_configs/. Nodes and GPUs come from SkyPilot's
variables (SKYPILOT_NODE_IPS, SKYPILOT_NODE_RANK, SKYPILOT_NUM_NODES, SKYPILOT_NUM_GPUS_PER_NODE);
with one process in all, the job runs directly, so its exit codes (2, 75) reach SkyPilot as they are.
Under torchrun or accelerate a worker's exit code is reported as 1; SkyPilot recovers a preempted
cluster regardless, and `max_restarts_on_errors` covers the rest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from entrypoint.errors import EXIT_CONFIG, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "accelerate_configs"
ACCELERATE_CONFIGS = {"deepspeed-zero2": "deepspeed_zero2.yaml", "fsdp": "fsdp_qlora.yaml"}
PORT = "29500"


def launch_command(environ: dict[str, str], distributed: str) -> list[str]:
    """The command line for this node."""
    nodes = int(environ.get("SKYPILOT_NUM_NODES", "1"))
    rank = environ.get("SKYPILOT_NODE_RANK", "0")
    gpus = int(environ.get("SKYPILOT_NUM_GPUS_PER_NODE") or "1")
    main_ip = (environ.get("SKYPILOT_NODE_IPS") or "127.0.0.1").split()[0]
    if nodes * gpus == 1:
        return [sys.executable, "-m", "entrypoint"]
    if distributed == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={rank}",
                f"--nproc_per_node={gpus}", f"--master_addr={main_ip}", f"--master_port={PORT}",
                "-m", "entrypoint"]
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(CONFIG_DIR / ACCELERATE_CONFIGS[distributed]),
            "--num_machines", str(nodes), "--machine_rank", rank, "--num_processes", str(nodes * gpus),
            "--main_process_ip", main_ip, "--main_process_port", PORT, "-m", "entrypoint"]


def main() -> int:
    from entrypoint.settings import load_settings

    try:
        settings = load_settings()  # a bad setting stops here, on every node, before any process starts
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    command = launch_command(dict(os.environ), settings.distributed)
    print("launch:", " ".join(command), file=sys.stderr, flush=True)
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
