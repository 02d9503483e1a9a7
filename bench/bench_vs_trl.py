"""Benchmark: the job (`python -m entrypoint`) against TRL's own CLI (`trl dpo`), side by side (issue 12).

    make bench      (.venv/bin/python bench/bench_vs_trl.py [--repeats 5] [--steps 24] [--out build/bench-vs-trl.json])

Both sides get the same inputs, made once before any run (not timed):
- the model: the tiny LLaVA-NeXT (`build_tiny`) saved as a model directory, read by both (`DPO_MODEL=<dir>`,
  `--model_name_or_path <dir>`);
- the pairs: `sample:rlaif-v` (48 rows) prepared once with the job's own pipeline (data/stage.py `prepare_pairs`),
  saved as parquet in TRL's conversational preference format (prompt/chosen/rejected chat messages and an `images`
  column) in one local dataset directory, read by the CLI with `--dataset_name <dir>` and by the job with
  `DPO_DATASET=<dir> DPO_DATASET_FORMAT=preference`. The directory holds the pairs twice: split `train` in the
  prepared order (what the CLI trains on) and split `job`, the same rows stored so that the job's seeded shuffle
  (prepare.py shuffles every dataset with DPO_SEED) gives back exactly that order. Both then see the same batches
  (the trainer's sampler, seeded alike, draws from the same order), which the loss check below needs. That the job
  turns split `job` into the same pairs in the same order is checked before the runs, with the job's pipeline;
- the training settings: steps, batch 2 (no accumulation), learning rate, beta, max length, scheduler and warmup,
  LoRA rank 8 / alpha 16 / dropout, seed, no quantization, fp32 on the CPU (bf16 off), no evaluation, a checkpoint
  at the last step, a log line every step. LoRA adapts the same modules on both sides: the job adapts the language
  model's linear layers (all-linear minus the vision tower and projector); the CLI's `all-linear` would also adapt
  the vision tower, so it gets `--lora_target_modules` with the full names of the modules the job's own LoRA
  config selects on this model (PEFT matches a full name exactly).

Then `--repeats` runs of each, alternating (after one untimed warm-up run of each, which fills the page and
`datasets` caches), each a fresh process from the shell's point of view, both streams read line by line as they
arrive. Per run: wall time from process start to the adapter on disk (adapter_model.safetensors in the final
output directory, polled every 20 ms) and to exit; time to the first training step (the arrival of step 1's log
line: the job's `entrypoint.progress: step 1/N` on stderr, the CLI's first log dict on stdout; both are written
when step 1 has finished); steady seconds a step (from step 4's line to the last step's); peak RSS of the whole
process tree (the CLI re-launches itself through `accelerate launch`: parent and child are summed). Then medians,
ratios job / CLI against the issue's goals, the losses step by step (from each run's trainer_state.json), the
adapters' tensor names and values, and the two DPOConfigs' differences.

Threads: `accelerate launch` on a machine without GPUs sets OMP_NUM_THREADS=1 for the CLI's training process
unless the caller set it; the job uses torch's default (every core). That is each tool's out-of-the-box
behaviour and is what runs by default; `--omp-threads N` sets OMP_NUM_THREADS=N for both. On a machine whose
cores other work shares, a process with one thread a core loses whole steps waiting for a descheduled thread: the
job's steady step time then swings (0.04-0.8 s on 2 busy cores, against the CLI's steady 0.05 s on one thread);
`--omp-threads 1` compares like with like there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB_SPLIT = "job"
STEADY_FROM = 4  # steady step time: from this step's log line to the last step's
POLL_S = 0.02
GOALS = {"wall_to_adapter_s": 0.7, "steady_s_per_step": 1.0}  # job / CLI, at most
STARTUP_GOAL_S = 5.0  # the job's time to the first step, under
JOB_STEP = re.compile(r"entrypoint\.progress: step (\d+)/(\d+)")
CLI_LOG = re.compile(r"^\{.*'loss'")
# DPOConfig fields that name paths or runs, not how training goes
CONFIG_NOISE = {"output_dir", "logging_dir", "run_name", "model_init_kwargs", "hub_token", "push_to_hub_token"}


def clean_env(work: Path, omp_threads: int | None) -> dict[str, str]:
    """This environment without DPO_*, wandb or credentials; offline; unbuffered output (the log lines' arrival
    times are the measurement); caches and accelerate's config under `work`."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("DPO_", "WANDB_", "AWS_")) and k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "HF_HOME": str(work / "hf")})
    if omp_threads:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    return env


@contextmanager
def patched_environ(values: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---- inputs, made once ---------------------------------------------------------------------------------------

def make_inputs(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The model directory, the dataset directory (splits `train` and `job`) and the CLI's LoRA targets."""
    import numpy as np

    from entrypoint.config.settings import load_settings
    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_processor, resolve_model
    from entrypoint.models.tiny import build_tiny

    started = time.perf_counter()
    model_dir = build_tiny("llava-next", work / "model")
    data_dir = work / "pairs"
    common = {"DPO_MODEL": str(model_dir), "DPO_CACHE_DIR": str(work / "cache"), "DPO_EVAL_FRACTION": "0",
              "DPO_MAX_LENGTH": str(args.max_length), "DPO_SEED": str(args.seed)}
    with patched_environ({**clean_env(work, None), **common, "DPO_DATASET": "sample:rlaif-v"}):
        settings = load_settings()
        model_ref = resolve_model(settings.model, settings.model_family, None, settings.cache_dir)
        processor = load_processor(model_ref)
        pairs = prepare_pairs(settings, settings.cache_dir, processor, model_ref.family, args.max_length,
                              settings.max_samples).train
    # split `job`: row order[i] holds pair i, so that the job's shuffle (rows.select(order), order the seeded
    # permutation prepare() draws) gives the pairs back in `train`'s order
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    stored = pairs.select(np.argsort(order))
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(str(data_dir / "data" / "train-00000-of-00001.parquet"))
    stored.to_parquet(str(data_dir / "data" / f"{JOB_SPLIT}-00000-of-00001.parquet"))

    # what the job will train on, read back from the directory with its own pipeline: the same pairs, same order
    with patched_environ({**clean_env(work, None), **common, "DPO_DATASET": str(data_dir),
                          "DPO_DATASET_SPLIT": JOB_SPLIT, "DPO_DATASET_FORMAT": "preference"}):
        settings = load_settings()
        job_view = prepare_pairs(settings, settings.cache_dir, processor, model_ref.family, args.max_length,
                                 settings.max_samples).train
    same = _same_pairs(pairs, job_view)
    if not same:
        raise SystemExit(f"the job reads {data_dir} (split {JOB_SPLIT}) as other pairs or in another order than "
                         "the CLI reads split train: the comparison would not be like for like")
    return {"model_dir": model_dir, "data_dir": data_dir, "pairs": len(pairs),
            "lora_targets": job_lora_targets(model_dir, model_ref.family, args),
            "seconds": time.perf_counter() - started}


def _same_pairs(a: Any, b: Any) -> bool:
    from datasets import Image, List

    if len(a) != len(b):
        return False
    raw = List(Image(decode=False))
    a, b = a.cast_column("images", raw), b.cast_column("images", raw)
    for left, right in zip(a, b, strict=True):
        if any(left[k] != right[k] for k in ("prompt", "chosen", "rejected")):
            return False
        if [i["bytes"] for i in left["images"]] != [i["bytes"] for i in right["images"]]:
            return False
    return True


def job_lora_targets(model_dir: Path, family: Any, args: argparse.Namespace) -> list[str]:
    """The full names of the modules the job's LoRA config (models/lora.py, lora_config) adapts on this model."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from entrypoint.config.settings import load_settings
    from entrypoint.models.lora import lora_config

    with patched_environ({"DPO_LORA_R": str(args.lora_r), "DPO_LORA_ALPHA": str(args.lora_alpha)}):
        config = lora_config(load_settings(), family)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32), config)
    prefix = "base_model.model."
    return sorted(name.removeprefix(prefix) for name, module in model.named_modules()
                  if hasattr(module, "lora_A") and isinstance(module.base_layer, torch.nn.Linear))


# ---- one run -------------------------------------------------------------------------------------------------

def job_command(inputs: dict[str, Any], out: Path, work: Path, args: argparse.Namespace) -> tuple[list[str], dict]:
    settings = {
        "MODEL": inputs["model_dir"], "DATASET": inputs["data_dir"], "DATASET_SPLIT": JOB_SPLIT,
        "DATASET_FORMAT": "preference", "QUANTIZATION": "none", "OUTPUT_DIR": out, "CACHE_DIR": work / "cache",
        "MAX_STEPS": args.steps, "PER_DEVICE_TRAIN_BATCH_SIZE": args.batch, "GRADIENT_ACCUMULATION_STEPS": 1,
        "LEARNING_RATE": args.learning_rate, "BETA": args.beta, "MAX_LENGTH": args.max_length,
        "LR_SCHEDULER_TYPE": args.lr_scheduler_type, "WARMUP_STEPS": args.warmup_steps,
        "LORA_R": args.lora_r, "LORA_ALPHA": args.lora_alpha, "LORA_DROPOUT": args.lora_dropout,
        "EVAL_FRACTION": 0, "EVAL_GENERATIONS": 0, "SAVE_STEPS": args.steps, "LOGGING_STEPS": 1,
        "USE_CPU": "true", "BF16": "false", "SEED": args.seed, "REPORT_TO": "none"}
    env = {**clean_env(work, args.omp_threads), **{f"DPO_{k}": str(v) for k, v in settings.items()}}
    return [sys.executable, "-m", "entrypoint"], env


def cli_command(inputs: dict[str, Any], out: Path, work: Path, args: argparse.Namespace) -> tuple[list[str], dict]:
    command = [
        str(BIN / "trl"), "dpo", "--model_name_or_path", str(inputs["model_dir"]),
        "--dataset_name", str(inputs["data_dir"]), "--output_dir", str(out),
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch),
        "--gradient_accumulation_steps", "1", "--learning_rate", str(args.learning_rate), "--beta", str(args.beta),
        "--max_length", str(args.max_length), "--lr_scheduler_type", args.lr_scheduler_type,
        "--warmup_steps", str(args.warmup_steps), "--use_peft", "--lora_r", str(args.lora_r),
        "--lora_alpha", str(args.lora_alpha), "--lora_dropout", str(args.lora_dropout),
        "--lora_target_modules", *inputs["lora_targets"], "--eval_strategy", "no", "--save_steps", str(args.steps),
        "--logging_steps", "1", "--use_cpu", "--bf16", "False", "--dtype", "float32", "--seed", str(args.seed),
        "--report_to", "none"]
    return command, clean_env(work, args.omp_threads)


def _read_lines(stream: Any, name: str, t0: float, lines: list[tuple[float, str, str]]) -> None:
    """Each line (\\n or tqdm's \\r ended) with the seconds since the process started when it arrived."""
    pending = b""
    while chunk := stream.read1(65536):
        now = time.perf_counter() - t0
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]", pending)
        lines.extend((now, name, line.decode(errors="replace")) for line in complete if line.strip())
    if pending.strip():
        lines.append((time.perf_counter() - t0, name, pending.decode(errors="replace")))


def _tree_rss(process: psutil.Process, members: dict[int, dict[str, Any]]) -> tuple[int, int]:
    """(RSS of the process and all its descendants, the largest one's); `members` gets each process's command,
    OMP_NUM_THREADS and peak RSS.

    A forked child that has not exec'd (its command line is its parent's) is left out: it shares its parent's pages
    copy-on-write, and adding its RSS would count them twice. The job forks to run `git` for its provenance; on a
    busy machine the fork lives long enough to be sampled."""
    sizes = []
    for member in [process, *process.children(recursive=True)]:
        try:
            command = member.cmdline()
            if member is not process and command == member.parent().cmdline():
                continue
            rss = member.memory_info().rss
            if member.pid not in members:
                members[member.pid] = {"command": " ".join(command)[:200],
                                       "omp_num_threads": member.environ().get("OMP_NUM_THREADS", "unset"),
                                       "peak_rss_mib": 0.0}
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):  # gone, or its parent is (None)
            continue
        sizes.append(rss)
        members[member.pid]["peak_rss_mib"] = max(members[member.pid]["peak_rss_mib"], rss / 2**20)
    return sum(sizes), max(sizes, default=0)


def run_once(tool: str, index: int, inputs: dict[str, Any], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / "runs" / f"{tool}-{index}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed or finished one
    command, env = (job_command if tool == "job" else cli_command)(inputs, out, work, args)
    adapter = out / ("adapter" if tool == "job" else "") / "adapter_model.safetensors"
    lines: list[tuple[float, str, str]] = []
    t0 = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    readers = [threading.Thread(target=_read_lines, args=(s, n, t0, lines), daemon=True)
               for s, n in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
    for reader in readers:
        reader.start()
    watched = psutil.Process(process.pid)
    peak_tree = peak_one = 0
    members: dict[int, dict[str, Any]] = {}
    adapter_at = None
    while process.poll() is None:
        try:
            tree, one = _tree_rss(watched, members)
        except psutil.NoSuchProcess:
            break
        peak_tree, peak_one = max(peak_tree, tree), max(peak_one, one)
        if adapter_at is None and adapter.is_file():
            adapter_at = time.perf_counter() - t0
        time.sleep(POLL_S)
    process.wait()
    exited = time.perf_counter() - t0
    for reader in readers:
        reader.join()
    if adapter_at is None and adapter.is_file():
        adapter_at = exited
    if process.returncode != 0 or adapter_at is None:
        tail = "\n".join(line for _, _, line in lines[-40:])
        raise RuntimeError(f"{tool} run {index} failed (exit {process.returncode}):\n{tail}")
    lines.sort(key=lambda item: item[0])
    log = "".join(f"{at:8.3f} {name} {line}\n" for at, name, line in lines)
    (work / "runs" / f"{tool}-{index}.log").write_text(log)  # every line with its arrival time
    steps = _step_times(tool, lines)
    if sorted(steps) != list(range(1, args.steps + 1)):
        raise RuntimeError(f"{tool} run {index}: step log lines for {sorted(steps)}, not 1-{args.steps} (has the log "
                           f"format changed? every line is in {work / 'runs' / f'{tool}-{index}.log'})")
    last = max(steps) if steps else 0
    steady = ((steps[last] - steps[STEADY_FROM]) / (last - STEADY_FROM)
              if STEADY_FROM in steps and last > STEADY_FROM else None)
    return {"tool": tool, "index": index, "wall_to_adapter_s": adapter_at, "wall_to_exit_s": exited,
            "first_step_s": steps.get(1), "steady_s_per_step": steady, "peak_rss_tree_mib": peak_tree / 2**20,
            "peak_rss_largest_mib": peak_one / 2**20, "processes": list(members.values()),
            "omp_num_threads": sorted({m["omp_num_threads"] for m in members.values()}), "steps_logged": len(steps),
            "losses": _losses(out / "checkpoints" if tool == "job" else out, args.steps), "output_dir": str(out)}


def _step_times(tool: str, lines: list[tuple[float, str, str]]) -> dict[int, float]:
    """{step: seconds since start when its log line arrived}."""
    times: dict[int, float] = {}
    if tool == "job":
        for at, stream, line in lines:
            match = JOB_STEP.search(line)
            if stream == "stderr" and match:
                times.setdefault(int(match.group(1)), at)
    else:  # one log dict a step (logging_steps=1); the summary dict at the end has train_loss, not loss
        for step, (at, _, _) in enumerate((x for x in lines if x[1] == "stdout" and CLI_LOG.search(x[2])), start=1):
            times[step] = at
    return times


def _losses(checkpoints: Path, steps: int) -> list[float]:
    state = json.loads((checkpoints / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in sorted(state["log_history"], key=lambda e: e["step"]) if "loss" in entry]


# ---- comparisons ---------------------------------------------------------------------------------------------

def compare_losses(runs: list[dict[str, Any]]) -> dict[str, Any]:
    job = [r["losses"] for r in runs if r["tool"] == "job"]
    cli = [r["losses"] for r in runs if r["tool"] == "cli"]

    def max_diff(a: list[float], b: list[float]) -> float:
        return max(abs(x - y) for x, y in zip(a, b, strict=True)) if len(a) == len(b) else float("inf")

    return {"job_vs_cli_max_abs_diff": max(max_diff(j, c) for j in job for c in cli),
            "job_vs_job_max_abs_diff": max((max_diff(job[0], j) for j in job[1:]), default=0.0),
            "cli_vs_cli_max_abs_diff": max((max_diff(cli[0], c) for c in cli[1:]), default=0.0),
            "per_step_abs_diff": [abs(x - y) for x, y in zip(job[0], cli[0], strict=False)],
            "job": job[0], "cli": cli[0]}


def compare_adapters(job_dir: Path, cli_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    job = load_file(str(job_dir / "adapter" / "adapter_model.safetensors"))
    cli = load_file(str(cli_dir / "adapter_model.safetensors"))
    common = sorted(set(job) & set(cli))
    return {"tensors_job": len(job), "tensors_cli": len(cli), "only_job": sorted(set(job) - set(cli)),
            "only_cli": sorted(set(cli) - set(job)),
            "max_abs_diff": max((float(abs(job[k].astype("float64") - cli[k].astype("float64")).max())
                                 for k in common), default=None)}


def compare_configs(job_dir: Path, cli_dir: Path, steps: int) -> dict[str, list[Any]]:
    """DPOConfig fields whose values differ (the job's from config.json, the CLI's from its checkpoint)."""
    import torch

    job = json.loads((job_dir / "config.json").read_text())["dpo_config"]
    cli = torch.load(cli_dir / f"checkpoint-{steps}" / "training_args.bin", weights_only=False).to_dict()
    return {k: [job.get(k), cli.get(k)] for k in sorted(set(job) | set(cli))
            if k not in CONFIG_NOISE and str(job.get(k)) != str(cli.get(k))}


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    keys = ("wall_to_adapter_s", "wall_to_exit_s", "first_step_s", "steady_s_per_step", "peak_rss_tree_mib")
    medians = {tool: {k: statistics.median(r[k] for r in runs if r["tool"] == tool) for k in keys}
               for tool in ("job", "cli")}
    ratios = {k: medians["job"][k] / medians["cli"][k] for k in keys}
    return medians, ratios


def print_table(runs: list[dict[str, Any]], medians: dict, ratios: dict) -> None:
    header = ("| run | tool | wall to adapter s | wall to exit s | first step s | steady s/step | peak RSS MiB "
              "(tree) | processes | OMP_NUM_THREADS |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in runs:
        print(f"| {r['index']} | {r['tool']} | {r['wall_to_adapter_s']:.2f} | {r['wall_to_exit_s']:.2f} | "
              f"{r['first_step_s']:.2f} | {r['steady_s_per_step']:.4f} | {r['peak_rss_tree_mib']:.0f} | "
              f"{len(r['processes'])} | {','.join(r['omp_num_threads'])} |")
    for tool in ("job", "cli"):
        m = medians[tool]
        print(f"| median | {tool} | {m['wall_to_adapter_s']:.2f} | {m['wall_to_exit_s']:.2f} | "
              f"{m['first_step_s']:.2f} | {m['steady_s_per_step']:.4f} | {m['peak_rss_tree_mib']:.0f} | | |")
    print(f"| ratio | job/cli | {ratios['wall_to_adapter_s']:.2f}x | {ratios['wall_to_exit_s']:.2f}x | "
          f"{ratios['first_step_s']:.2f}x | {ratios['steady_s_per_step']:.2f}x | {ratios['peak_rss_tree_mib']:.2f}x "
          "| | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each, alternating (default 5)")
    parser.add_argument("--steps", type=int, default=24, help="training steps (48 pairs, batch 2: one epoch)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lr-scheduler-type", default="cosine")
    parser.add_argument("--warmup-steps", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--omp-threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both (default: unset; accelerate then gives the CLI 1 on a CPU)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each")
    parser.add_argument("--work", type=Path, default=None,
                        help="working directory, kept (inputs, runs, each run's timed log lines); default: a new "
                             "temporary one, removed at the end")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-vs-trl.json")
    args = parser.parse_args()
    if args.steps <= STEADY_FROM:
        parser.error(f"--steps must be over {STEADY_FROM} (steady step time is measured from step {STEADY_FROM})")
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()  # other work on the machine: one-thread-a-core processes suffer most (see above)

    inputs = make_inputs(work, args)
    print(f"inputs ({inputs['seconds']:.1f} s, not timed): model {inputs['model_dir']}, {inputs['pairs']} pairs in "
          f"{inputs['data_dir']}, LoRA on {len(inputs['lora_targets'])} modules", flush=True)
    if not args.no_warmup:
        for tool in ("job", "cli"):
            run_once(tool, 0, inputs, work, args)
    runs = []
    for index in range(1, args.repeats + 1):
        for tool in ("job", "cli"):
            runs.append(run_once(tool, index, inputs, work, args))
            r = runs[-1]
            print(f"  {tool} run {index}: {r['wall_to_adapter_s']:.2f} s to the adapter, first step "
                  f"{r['first_step_s']:.2f} s", flush=True)
    medians, ratios = summarise(runs)
    losses = compare_losses(runs)
    first = {r["tool"]: Path(r["output_dir"]) for r in runs if r["index"] == 1}
    adapters = compare_adapters(first["job"], first["cli"])
    configs = compare_configs(first["job"], first["cli"], args.steps)

    print()
    print_table(runs, medians, ratios)
    print()
    for key, goal in GOALS.items():
        print(f"goal {key} job/cli <= {goal}: {ratios[key]:.2f}x ({'met' if ratios[key] <= goal else 'missed'})")
    startup = medians["job"]["first_step_s"]
    print(f"goal job start-up (to the first step) < {STARTUP_GOAL_S} s: {startup:.2f} s "
          f"({'met' if startup < STARTUP_GOAL_S else 'missed'})")
    print(f"losses, {len(losses['job'])} steps: max |job - cli| {losses['job_vs_cli_max_abs_diff']:.3g} "
          f"(job runs among themselves {losses['job_vs_job_max_abs_diff']:.3g}, CLI runs "
          f"{losses['cli_vs_cli_max_abs_diff']:.3g}); first/last loss job {losses['job'][0]:.6f}/"
          f"{losses['job'][-1]:.6f}, cli {losses['cli'][0]:.6f}/{losses['cli'][-1]:.6f}")
    print(f"adapters: {adapters['tensors_job']} tensors (job), {adapters['tensors_cli']} (cli), "
          f"{len(adapters['only_job']) + len(adapters['only_cli'])} not in both, max |job - cli| "
          f"{adapters['max_abs_diff']}")
    print(f"DPOConfig fields that differ (job, cli): {json.dumps(configs) if configs else 'none'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()},
        "runs": runs, "medians": medians, "ratios_job_over_cli": ratios,
        "goals": {**{f"{k}_ratio_at_most": g for k, g in GOALS.items()}, "job_first_step_s_under": STARTUP_GOAL_S},
        "losses": losses, "adapters": adapters, "dpo_config_differences": configs}, indent=2))
    print(f"wrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
