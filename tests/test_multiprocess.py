"""Several processes through the launcher the SkyPilot YAMLs run (DDP over gloo on the CPU).

One adapter and one manifest from two training processes; the workers' exit codes (2, 75) reach
SkyPilot as they are. Note `accelerate launch --cpu --num_processes 2` would run ONE process: the
launcher uses torchrun for DDP, which really starts two.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, job_env
from entrypoint.errors import EXIT_CONFIG, EXIT_OUT_OF_MEMORY, EXIT_PREEMPTED
from entrypoint.launch import ACCELERATE_CONFIGS, CONFIG_DIR, exit_code, launch_command

LAUNCH = [sys.executable, "-m", "entrypoint.launch"]
# What SkyPilot sets on a 2-GPU node; here two CPU processes stand for the GPUs, so the job is told that a CPU run is
# meant (it refuses to train on the CPU where GPUs are said to be: entrypoint/machine.py).
TWO_PROCESSES = {"SKYPILOT_NUM_GPUS_PER_NODE": "2", "DPO_ALLOW_CPU": "true"}


def tiny_env(cache_dir, output, **settings):
    defaults = {"model": "tiny:llava-next", "dataset": "sample:rlaif-v", "max_samples": "40",
                "per_device_train_batch_size": "2", "gradient_accumulation_steps": "1", "eval_fraction": "0.2"}
    return {**job_env(cache_dir, output, **{**defaults, **settings}), **TWO_PROCESSES}


@pytest.mark.slow
def test_two_processes_train_together_and_rank_0_alone_writes(tmp_path, cache_dir):
    output, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    env = tiny_env(cache_dir, output, max_steps="4", eval_generations="1", logging_steps="1", report_to="wandb")
    env.update(WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_PROJECT="test")
    result = subprocess.run(LAUNCH, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(list(wandb_dir.glob("wandb/offline-run-*"))) == 1  # rank 0 alone reports
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 -m entrypoint" in result.stderr
    assert result.stderr.count("reusing prepared data") == 1  # rank 0 prepared it, rank 1 loaded it
    assert result.stdout.count("done:") == 1  # rank 0 reports
    assert list(tmp_path.rglob("manifest.json")) == [output / "manifest.json"]
    adapters = [p for p in tmp_path.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts]
    assert adapters == [output / "adapter" / "adapter_model.safetensors"]
    metrics = json.loads((output / "metrics.json").read_text())
    # 32 train pairs, 2 per process: both processes trained -> 4 pairs a step, epoch 0.5 after 4 steps
    assert metrics["train"]["epoch"] == 0.5
    assert json.loads((output / "config.json").read_text())["quantization"] == "4bit"  # QLoRA under DDP


@pytest.mark.slow
def test_a_bad_setting_found_by_the_workers_exits_2_not_1(tmp_path, cache_dir):
    env = tiny_env(cache_dir, tmp_path / "run", dataset=str(tmp_path / "missing.parquet"))
    result = subprocess.run(LAUNCH, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == EXIT_CONFIG, result.stderr[-4000:]
    assert "missing.parquet" in result.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_75(tmp_path, cache_dir):
    """A spot notice reaches the launcher: the workers finish the step, save, and the job exits 75."""
    output = tmp_path / "run"
    env = tiny_env(cache_dir, output, max_steps="100000", logging_steps="1", save_steps="100000")
    job = subprocess.Popen(LAUNCH, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started, lines = time.monotonic(), []
    for line in job.stderr:  # wait until training runs
        lines.append(line)
        if " step 2/" in line or time.monotonic() - started > 120:
            break
    job.send_signal(signal.SIGTERM)
    lines.extend(job.stderr)
    assert job.wait(timeout=120) == EXIT_PREEMPTED, "".join(lines)[-4000:]
    markers = list((output / "checkpoints").glob("checkpoint-*/dpo_checkpoint.json"))
    assert len(markers) == 1 and not (output / "manifest.json").exists()


def test_a_removed_strategy_is_a_config_error(tmp_path):
    """DPO_DISTRIBUTED=deepspeed-zero2 still parses, so the launcher can say it was removed and what to use."""
    env = {**job_env(tmp_path, tmp_path / "run", distributed="deepspeed-zero2"), **TWO_PROCESSES}
    result = subprocess.run(LAUNCH, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: DPO_DISTRIBUTED=deepspeed-zero2: DeepSpeed ZeRO-2 was removed")
    assert "DPO_DISTRIBUTED=fsdp" in error and "ddp" in error and "Traceback" not in result.stderr


def test_one_process_runs_the_job_itself(tmp_path, cache_dir):
    env = job_env(cache_dir, tmp_path / "run", model="tiny:llava-next", dataset="sample:rlaif-v")
    result = subprocess.run([*LAUNCH, "--dry-run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"launch: {sys.executable} -m entrypoint --dry-run" in result.stderr and "dry run" in result.stderr


def test_launch_command_per_strategy():
    single = launch_command({}, "ddp", ["--dry-run"])
    assert single[1:] == ["-m", "entrypoint", "--dry-run"]
    env = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "8",
           "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2"}
    ddp = launch_command(env, "ddp")
    assert ddp[1:3] == ["-m", "torch.distributed.run"] and ddp[-2:] == ["-m", "entrypoint"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=10.0.0.1"} <= set(ddp)
    assert "--standalone" in launch_command({"SKYPILOT_NUM_GPUS_PER_NODE": "8"}, "ddp")
    assert set(ACCELERATE_CONFIGS) == {"fsdp"}  # deepspeed-zero2 was removed
    for strategy, config in ACCELERATE_CONFIGS.items():
        command = launch_command(env, strategy)
        option = dict(zip(command, command[1:], strict=False))
        assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-2:] == ["-m", "entrypoint"]
        assert option["--config_file"] == str(CONFIG_DIR / config)
        assert (option["--num_processes"], option["--num_machines"], option["--machine_rank"]) == ("16", "2", "1")
        assert option["--main_process_ip"] == "10.0.0.1"


def test_exit_code_from_the_workers():
    assert exit_code([EXIT_CONFIG, -signal.SIGTERM]) == EXIT_CONFIG  # the other was stopped by torchrun
    assert exit_code([EXIT_PREEMPTED, EXIT_PREEMPTED]) == EXIT_PREEMPTED
    assert exit_code([-signal.SIGTERM]) == EXIT_PREEMPTED
    assert exit_code([1, EXIT_PREEMPTED]) == 1  # a bug must not become "restart me"
    assert exit_code([-signal.SIGKILL]) == 1 and exit_code([EXIT_CONFIG, 1]) == 1
    assert exit_code([EXIT_OUT_OF_MEMORY, -signal.SIGTERM]) == EXIT_OUT_OF_MEMORY  # one rank ran out: not "restart me"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIG_DIR / name))  # rejects unknown keys
    assert yaml.safe_load((CONFIG_DIR / name).read_text())["mixed_precision"] == "bf16"
    assert config.distributed_type.value in ("MULTI_GPU", "FSDP")
    assert name in {"ddp.yaml", *ACCELERATE_CONFIGS.values()}  # no config left for a removed strategy


@pytest.mark.parametrize("family", ["llava-next", "llava", "idefics2", "causal-lm"])
def test_fsdp_wraps_the_layers_of_every_family(family, cache_dir):
    """The FSDP config wraps the layers the model declares (`_no_split_modules`): each must exist.

    FSDP needs GPUs, so this checks the step that fails first on them: building the wrap policy.
    """
    from accelerate.utils import FullyShardedDataParallelPlugin
    from peft import get_peft_model

    from entrypoint.config.settings import load_settings
    from entrypoint.models.loading import load_model, resolve_model
    from entrypoint.models.lora import lora_config

    fsdp = yaml.safe_load((CONFIG_DIR / "fsdp_qlora.yaml").read_text())["fsdp_config"]
    ref = resolve_model(f"tiny:{family}", "auto", None, cache_dir)
    model = get_peft_model(load_model(ref, "none", "fsdp"), lora_config(load_settings(), ref.family))
    plugin = FullyShardedDataParallelPlugin(fsdp_version=fsdp["fsdp_version"],
                                            auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"])
    plugin.set_auto_wrap_policy(model)  # ValueError if a declared layer class is not in the model
    assert "MistralDecoderLayer" in plugin.transformer_cls_names_to_wrap
