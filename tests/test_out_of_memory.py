"""Out of GPU memory: exit 3 with a message to act on, and SkyPilot's restart of the same managed job ends at once.

A CPU never runs out of CUDA memory, so the model's forward raises what CUDA's caching allocator raises
(torch.OutOfMemoryError, with its message) at the second training step; everything else is the real job, run
in-process through `python -m entrypoint`'s main(): the trainer, its batches, the memory plan, the exit code.
"""

from __future__ import annotations

import gc
import json
import logging

import pytest

from conftest import job_env
from entrypoint.errors import EXIT_OK, EXIT_OUT_OF_MEMORY

TORCH_SAYS = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 39.39 GiB of which "
              "1.06 GiB is free.")


@pytest.fixture
def in_process(monkeypatch):
    """main() pauses the garbage collector and installs the job's log handler: both are put back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    gc.unfreeze()
    gc.enable()
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def oom_at_step_2(monkeypatch):
    """The tiny LLaVA-NeXT backbone's forward (TRL's fused LM head calls it directly), counted; the third one in
    training (step 2's first) runs out of memory."""
    import torch
    import transformers

    calls = []
    forward = transformers.LlavaNextModel.forward

    def counted(self, *args, **kwargs):
        if self.training:
            calls.append(kwargs["input_ids"].shape)
            if len(calls) == 3:
                raise torch.OutOfMemoryError(TORCH_SAYS)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(transformers.LlavaNextModel, "forward", counted)
    return calls


def _main(monkeypatch, env):
    from entrypoint.__main__ import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return main([])


def test_out_of_memory_is_exit_3_naming_the_step_the_batch_and_what_lowers_memory(
        tmp_path, cache_dir, monkeypatch, capsys, in_process, oom_at_step_2):
    env = job_env(cache_dir, tmp_path / "run", model="tiny:llava-next", dataset="sample:rlaif-v", max_steps="6",
                  per_device_train_batch_size="2", gradient_accumulation_steps="1", eval_fraction="0",
                  max_samples="24", learning_rate="5e-3")
    assert _main(monkeypatch, env) == EXIT_OUT_OF_MEMORY
    error = capsys.readouterr().err
    sequences, tokens = oom_at_step_2[-1]
    assert sequences == 4  # 2 pairs: chosen and rejected of each
    assert (f"out of memory: the GPU ran out of memory in training step 2 of 6, on a batch of 2 pairs "
            f"(4 sequences x {tokens:,} tokens with padding): the memory plan expected ") in error
    assert f"({TORCH_SAYS})" in error  # torch's own first line, kept
    fixes = error.split("To lower memory: ", 1)[1]
    assert "DPO_PER_DEVICE_TRAIN_BATCH_SIZE=1 with DPO_GRADIENT_ACCUMULATION_STEPS=2 (" in fixes  # its plan, in GiB
    assert "GiB)" in fixes and "DPO_MAX_LENGTH" in fixes
    assert "Traceback" not in error
    assert not (tmp_path / "run" / "checkpoints" / "failed.json").exists()  # outside SkyPilot: nothing recorded


def test_a_managed_job_restarted_after_running_out_of_memory_ends_at_once(
        tmp_path, cache_dir, monkeypatch, capsys, in_process, oom_at_step_2):
    """SkyPilot restarts every non-zero exit up to max_restarts_on_errors: the restart of the same managed job
    (same SKYPILOT_TASK_ID) exits 3 with the recorded message before loading anything; a new launch runs."""
    env = job_env(cache_dir, tmp_path / "run", model="tiny:llava-next", dataset="sample:rlaif-v", max_steps="6",
                  per_device_train_batch_size="2", gradient_accumulation_steps="1", eval_fraction="0",
                  max_samples="24")
    env["SKYPILOT_TASK_ID"] = "sky-managed-2026-12-01-12-00-00-000000_dpo_7-0"
    assert _main(monkeypatch, env) == EXIT_OUT_OF_MEMORY
    recorded = json.loads((tmp_path / "run" / "checkpoints" / "failed.json").read_text())
    assert recorded["exit_code"] == EXIT_OUT_OF_MEMORY and recorded["task_id"] == env["SKYPILOT_TASK_ID"]
    capsys.readouterr()
    forwards = len(oom_at_step_2)
    assert _main(monkeypatch, env) == EXIT_OUT_OF_MEMORY
    error = capsys.readouterr().err
    assert len(oom_at_step_2) == forwards  # no model ran
    assert "not retried: this managed job's last attempt ended with exit 3" in error
    assert "training step 2 of 6" in error
    launched_again = env | {"SKYPILOT_TASK_ID": "sky-managed-2026-12-01-13-00-00-000000_dpo_8-0"}
    assert _main(monkeypatch, launched_again) == EXIT_OK  # the counted forward runs out of memory only once
    assert len(oom_at_step_2) > forwards
