"""Spot-proofing: exact resume after kill -9, SIGTERM, half-written checkpoints, changed settings."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from conftest import job_env, run_job, start_job, wait_for
from entrypoint.errors import EXIT_PREEMPTED
from entrypoint.run import checkpoints
from entrypoint.run.outputs import sha256_file

RUN = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="40", max_steps="12",
           per_device_train_batch_size="4", gradient_accumulation_steps="1", learning_rate="5e-3",
           logging_steps="2", eval_fraction="0.2", eval_generations="0", save_steps="3", save_total_limit="2")


def adapter_sha(output: Path) -> str:
    return sha256_file(output / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted")
    result = run_job(job_env(cache_dir, output, **RUN))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_kill_9_at_a_random_step_then_restart_gives_a_bit_identical_adapter(tmp_path, cache_dir, uninterrupted):
    output = tmp_path / "killed"
    env = job_env(cache_dir, output, **RUN)
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 2**32))  # KILL_SEED=<printed seed> replays a failure
    print(f"KILL_SEED={seed}")
    rng = random.Random(seed)
    process = start_job(env)
    step = rng.choice((3, 6))
    wait_for(output / "checkpoints" / f"checkpoint-{step}" / checkpoints.COMPLETE_MARKER, process)
    time.sleep(rng.uniform(0, 0.2))  # a step or two later, possibly mid-save
    assert process.poll() is None, "finished before it could be killed"
    process.kill()
    process.wait()

    restarted = run_job(env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming from" in restarted.stderr and "reusing prepared data" in restarted.stderr
    assert adapter_sha(output) == adapter_sha(uninterrupted)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 12 and metrics["train"]["resumed_from"]


def test_save_total_limit_keeps_the_newest_complete_checkpoints(uninterrupted):
    """12 steps saved every 3 with DPO_SAVE_TOTAL_LIMIT=2: checkpoints 3 and 6 were pruned, 9 and 12 kept whole."""
    kept = checkpoints.checkpoint_dirs(uninterrupted / "checkpoints")
    assert [path.name for path in kept] == ["checkpoint-9", "checkpoint-12"]
    assert all(checkpoints.is_complete(path) for path in kept)


def test_sigterm_finishes_the_step_saves_and_exits_with_the_recovery_code(tmp_path, cache_dir, uninterrupted):
    output = tmp_path / "preempted"
    env = job_env(cache_dir, output, **RUN)
    process = start_job(env)
    wait_for(output / "checkpoints" / "checkpoint-3" / checkpoints.COMPLETE_MARKER, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, stderr[-3000:]
    saved = checkpoints.latest_complete(output / "checkpoints")
    assert saved is not None and f"stopped at step {saved.name.split('-')[1]} by SIGTERM" in stderr
    assert not (output / "manifest.json").exists()

    restarted = run_job(env)
    assert restarted.returncode == 0 and f"resuming from {saved}" in restarted.stderr
    assert adapter_sha(output) == adapter_sha(uninterrupted)


def test_a_finished_run_restarted_does_no_training_again(cache_dir, uninterrupted):
    before = (uninterrupted / "manifest.json").read_text()
    again = run_job(job_env(cache_dir, uninterrupted, **RUN))
    assert again.returncode == 0 and "results already complete" in again.stderr
    assert (uninterrupted / "manifest.json").read_text() == before


def test_changed_training_settings_are_refused_unless_resume_never(tmp_path, cache_dir, uninterrupted):
    changed = job_env(cache_dir, uninterrupted, **{**RUN, "learning_rate": "1e-3"})
    refused = run_job(changed)
    assert refused.returncode == 2
    assert "DPO_LEARNING_RATE: 0.005 -> 0.001" in refused.stderr and "DPO_RESUME=never" in refused.stderr
    assert "Traceback" not in refused.stderr

    allowed = run_job(job_env(cache_dir, uninterrupted, **{**RUN, "logging_steps": "3"}))  # reporting only
    assert allowed.returncode == 0

    output = tmp_path / "copy"
    import shutil

    shutil.copytree(uninterrupted, output)
    foreign = output / "checkpoints" / "team-notes" / "keep.txt"  # a shared bucket mount holds other things
    foreign.parent.mkdir()
    foreign.write_text("not the job's")
    fresh = run_job(job_env(cache_dir, output, **{**RUN, "learning_rate": "1e-3", "resume": "never"}))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resuming from" not in fresh.stderr
    assert adapter_sha(output) != adapter_sha(uninterrupted)
    assert foreign.read_text() == "not the job's"  # DPO_RESUME=never used to delete the whole directory


def test_a_reporting_only_change_resumes_mid_training_to_the_same_adapter(tmp_path, cache_dir, uninterrupted):
    """Killed after its first checkpoint, restarted with another DPO_LOGGING_STEPS: training resumes there (not
    "results already complete", not refused) and ends with the uninterrupted run's adapter."""
    output = tmp_path / "relogged"
    process = start_job(job_env(cache_dir, output, **RUN))
    wait_for(output / "checkpoints" / "checkpoint-3" / checkpoints.COMPLETE_MARKER, process)
    process.kill()
    process.wait()
    assert not (output / "manifest.json").exists()

    restarted = run_job(job_env(cache_dir, output, **{**RUN, "logging_steps": "3"}))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming from" in restarted.stderr and "results already complete" not in restarted.stderr
    assert "resumed with this run's intervals: logging_steps 2 -> 3" in restarted.stderr
    assert "do not match the ones in the `trainer_state" not in restarted.stderr  # transformers' line, wrong here
    assert adapter_sha(output) == adapter_sha(uninterrupted)
    history = json.loads((output / "metrics.json").read_text())["history"]
    resumed_from = int(json.loads((output / "metrics.json").read_text())["train"]["resumed_from"].split("-")[-1])
    logged = [entry["step"] for entry in history if "loss" in entry and entry["step"] > resumed_from]
    assert logged and all(step % 3 == 0 for step in logged)  # the new logging interval took effect


def test_resume_never_removes_only_what_the_job_wrote(tmp_path):
    from entrypoint.run.state import remove_own_files

    root = tmp_path / "mount"
    for name in ("checkpoint-5/adapter.bin", "checkpoint-10/x", "prepared/data.arrow", "prepared.tmp/a",
                 "state.json", ".state.json.k2j3", "other-run/checkpoint-5/x", "state.json.backup", "notes.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    assert remove_own_files(root) == ["notes.txt", "other-run", "state.json.backup"]
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "other-run", "state.json.backup"]


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "optimizer.pt").write_bytes(b"x" * 100)
    (path / "trainer_state.json").write_text("{}")
    if complete:
        checkpoints.mark_complete(path)
    return path


def test_a_checkpoint_cut_off_mid_write_is_skipped_for_the_previous_one(tmp_path):
    good = _fake_checkpoint(tmp_path, 5)
    truncated = _fake_checkpoint(tmp_path, 10)
    (truncated / "optimizer.pt").write_bytes(b"x" * 10)  # the marker says 100 bytes
    _fake_checkpoint(tmp_path, 15, complete=False)  # killed before the marker
    assert checkpoints.latest_complete(tmp_path) == good
    checkpoints.remove_incomplete(tmp_path)
    assert checkpoints.checkpoint_dirs(tmp_path) == [good]


def test_pruning_keeps_the_newest_and_never_the_resume_source(tmp_path):
    dirs = [_fake_checkpoint(tmp_path, step) for step in (3, 6, 9, 12)]
    checkpoints.prune(tmp_path, keep=2, protected=dirs[0])
    assert checkpoints.checkpoint_dirs(tmp_path) == [dirs[0], dirs[2], dirs[3]]
    checkpoints.prune(tmp_path, keep=None, protected=None)  # no limit: nothing deleted
    assert len(checkpoints.checkpoint_dirs(tmp_path)) == 3


def test_settings_that_do_not_shape_training_are_real_settings():
    from entrypoint.config.settings import Settings
    from entrypoint.run.state import _NOT_TRAINING

    assert _NOT_TRAINING <= set(Settings.model_fields)  # a renamed field would silently count as training


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(tmp_path, monkeypatch):
    """state.json written by a version without DPO_ROUNDS: resuming with it at its default (0) is the same training;
    set to something else, it is a changed setting."""
    from conftest import settings_from
    from entrypoint.errors import ConfigError
    from entrypoint.run.state import STATE, RunState

    settings = settings_from(monkeypatch, DPO_MODEL="tiny:llava-next", DPO_DATASET="sample:rlaif-v")
    RunState.open(tmp_path, settings).mark("prepared")
    state = json.loads((tmp_path / STATE).read_text())
    del state["settings"]["rounds"], state["settings"]["samples_per_prompt"]  # an older job's state.json
    (tmp_path / STATE).write_text(json.dumps(state))
    assert RunState.open(tmp_path, settings).done("prepared")
    with pytest.raises(ConfigError, match="DPO_ROUNDS: None -> 2"):
        RunState.open(tmp_path, settings_from(monkeypatch, DPO_ROUNDS="2"))
