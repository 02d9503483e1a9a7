"""The GPU benchmark's script runs (on a CPU, with the shapes: model), so it cannot rot between GPU sessions."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, job_env


def test_bench_gpu_runs_both_settings_and_prints_plan_and_measure(tmp_path, cache_dir):
    env = job_env(cache_dir, tmp_path / "unused")
    result = subprocess.run([sys.executable, "bench/bench_gpu.py", "--steps", "1", "--rows", "4", "--workdir",
                             str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 1 tile", "| full anyres"))]
    assert len(rows) == 2
    tokens = [int(row.split("|")[4]) for row in rows]  # pair tokens p50: anyres costs more than 1 tile
    assert tokens[0] < tokens[1]
    assert "CPU (shapes:llava-next, not a GPU figure)" in result.stdout
