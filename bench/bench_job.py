"""Benchmark: the whole job on the tiny model, 4-bit QLoRA against no quantization, side by side.

    .venv/bin/python bench/bench_job.py [--steps 40] [--repeats 2]

Runs `python -m entrypoint` as the container does, alternating the variants so both see the same
machine load, and reports training throughput (from the trainer), wall time and peak RSS.
On a GPU machine set BENCH_MODEL to a local model directory to measure a real-size model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mib(process: subprocess.Popen) -> float:
    """Sampled every 50 ms while the job runs."""
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return peak / 2**20


def run_once(quantization: str, steps: int, cache: Path) -> dict[str, float]:
    output = Path(tempfile.mkdtemp(prefix=f"bench-{quantization}-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DPO_MODEL": os.environ.get("BENCH_MODEL", "tiny:llava-next"),
           "DPO_DATASET": "sample:rlaif-v", "DPO_MAX_SAMPLES": "64", "DPO_MAX_STEPS": str(steps),
           "DPO_PER_DEVICE_TRAIN_BATCH_SIZE": "4", "DPO_GRADIENT_ACCUMULATION_STEPS": "1",
           "DPO_SAVE_STEPS": str(steps), "DPO_EVAL_FRACTION": "0.25", "DPO_EVAL_GENERATIONS": "0",
           "DPO_QUANTIZATION": quantization, "DPO_OUTPUT_DIR": str(output), "DPO_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "entrypoint"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_mib = _peak_rss_mib(process)
    if process.wait() != 0:
        raise RuntimeError(f"job failed ({quantization})")
    wall = time.perf_counter() - started
    train = json.loads((output / "metrics.json").read_text())["train"]
    return {"wall_s": wall, "train_s": train["train_runtime"], "samples_per_s": train["train_samples_per_second"],
            "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    run_once("none", 2, cache)  # warm-up: builds the tiny model and the sample
    results: dict[str, list[dict[str, float]]] = {"4bit": [], "none": []}
    for _ in range(args.repeats):
        for quantization in results:
            results[quantization].append(run_once(quantization, args.steps, cache))
    summary = {q: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for q, runs in results.items()}
    for quantization, row in summary.items():
        print(f"{quantization:>5}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    ratio = summary["4bit"]["samples_per_s"] / summary["none"]["samples_per_s"]
    print(f"4bit / none throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
