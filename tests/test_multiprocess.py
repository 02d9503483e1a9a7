"""Several processes (DDP over gloo on the CPU) through the real entrypoint: one adapter, one manifest."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, job_env
from entrypoint.launch import launch_command


def test_two_processes_train_together_and_rank_0_alone_writes(tmp_path, cache_dir):
    output = tmp_path / "run"
    env = job_env(cache_dir, output, model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="40",
                  max_steps="4", per_device_train_batch_size="2", gradient_accumulation_steps="1",
                  eval_fraction="0.2", eval_generations="1", logging_steps="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "entrypoint"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("done:") == 1  # rank 0 reports
    manifests = list(tmp_path.rglob("manifest.json"))
    assert manifests == [output / "manifest.json"]
    config = json.loads((output / "config.json").read_text())
    assert config["dpo_config"]["use_cpu"] is True
    metrics = json.loads((output / "metrics.json").read_text())
    # 32 train pairs, 2 per process, 2 processes: 4 pairs a step -> epoch 0.5 after 4 steps (0.25 with one)
    assert metrics["train"]["epoch"] == 0.5


def test_launch_command_per_strategy():
    single = launch_command({}, "ddp")
    assert single[1:] == ["-m", "entrypoint"]
    env = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "8",
           "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2"}
    ddp = launch_command(env, "ddp")
    assert ddp[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=10.0.0.1"} <= set(ddp)
    fsdp = launch_command(env, "fsdp")
    assert fsdp[fsdp.index("--num_processes") + 1] == "16" and fsdp[fsdp.index("--machine_rank") + 1] == "1"
    config = fsdp[fsdp.index("--config_file") + 1]
    assert config.endswith("fsdp_qlora.yaml") and (ROOT / "entrypoint" / "accelerate_configs").is_dir()
    assert launch_command(env, "deepspeed-zero2")[fsdp.index("--config_file") + 1].endswith("deepspeed_zero2.yaml")
