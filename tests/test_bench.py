"""The benchmarks' scripts run (the GPU one on a CPU, with the shapes: model; the data one on a few rows), so they
cannot rot between benchmark sessions."""

from __future__ import annotations

import json
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


def test_bench_gpu_rounds_measures_sampling_and_judging_against_the_plan(tmp_path, cache_dir):
    """`make bench-gpu-rounds` on a CPU: one round of the shapes model judged by itself; on a GPU the same command
    measures the rates the rounds plan assumes."""
    env = job_env(cache_dir, tmp_path / "unused")
    result = subprocess.run([sys.executable, "bench/bench_gpu.py", "--rounds", "--steps", "1", "--rows", "5",
                             "--workdir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on-policy round on CPU (shapes:llava-next, not a GPU figure): 4 prompts x 2 samples" in result.stdout
    [row] = [line for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert 4 * 2 <= int(cells[0]) <= 4 * 2 * 4  # 4 prompts x 2 samples of 1 to 4 tokens (DPO_SAMPLE_MAX_NEW_TOKENS)
    assert cells[2].endswith("(150)") and int(cells[3]) >= 4 * 2  # one claim a sample at least


def test_bench_data_times_ours_naive_and_floor_and_keeps_every_row(tmp_path):
    out = tmp_path / "results.json"
    env = job_env(tmp_path / "cache", tmp_path / "unused")
    result = subprocess.run([sys.executable, "bench/bench_data.py", "--rows", "12", "--num-proc", "2", "--out",
                             str(out), "--work", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    contenders = results["contenders"]
    assert set(contenders) == {"ours", "naive", "floor", "floor_parallel"}
    assert all(entry["rows_per_s"] > 0 for entry in contenders.values())
    assert contenders["ours"]["pairs"] == results["rows"] == 12  # prepare() dropped nothing
    assert results["data"]["rows"] == 12 and 0.05 < results["data"]["bytes_per_pixel"] < 1  # photo-like JPEGs
    assert "| ours (prepare) | 2 |" in result.stdout


def test_bench_settings_measures_validation_without_torch():
    result = subprocess.run([sys.executable, "bench/bench_settings.py", "--runs", "1"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    measured = json.loads(result.stdout)
    assert measured["median_s"] > 0 and measured["torch_imported"] is False


def test_bench_vs_trl_runs_both_and_they_train_alike(tmp_path):
    """One short run of the job and of `trl dpo` (20-50 s on 2 cores): both timed, the same losses and adapters."""
    out = tmp_path / "vs-trl.json"
    result = subprocess.run([sys.executable, "bench/bench_vs_trl.py", "--repeats", "1", "--steps", "5", "--no-warmup",
                             "--work", str(tmp_path / "work"), "--out", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [run["tool"] for run in results["runs"]] == ["job", "cli"]
    for run in results["runs"]:
        assert run["steps_logged"] == 5 and 0 < run["first_step_s"] < run["wall_to_adapter_s"]
        assert run["steady_s_per_step"] > 0 and run["peak_rss_tree_mib"] > 0
    assert len(results["runs"][1]["processes"]) >= 2  # the CLI re-launches itself through accelerate
    assert len(results["losses"]["job"]) == 5 and results["losses"]["job_vs_cli_max_abs_diff"] < 1e-5
    assert results["adapters"]["only_job"] == results["adapters"]["only_cli"] == []
    assert "| ratio | job/cli |" in result.stdout
