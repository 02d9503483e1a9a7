"""The on-policy rounds in --dry-run (planning/rounds.py): the plan's lines for a tiny run, and a model judge whose
weights do not fit beside the policy refused with exit 2 before any model is loaded."""

from __future__ import annotations

import re
import shutil

from conftest import job_env, run_job, settings_from
from entrypoint.models.published import full_config

TINY_ROUNDS = dict(model="tiny:llava-next", dataset="sample:vqa-rad", max_samples="32", rounds="3", max_steps="16")


def _plan_lines(log: str) -> list[str]:
    lines = [line.split(" entrypoint: ", 1)[-1] for line in log.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("on-policy rounds plan"))
    return lines[start:start + 14]


def test_a_dry_run_prints_the_rounds_plan(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", **TINY_ROUNDS), "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    plan = _plan_lines(result.stderr)
    # 32 rows -> 30 training prompts + 2 held out (DPO_EVAL_FRACTION 0.05, by group); the defaults: 4 samples a
    # prompt of at most 64 tokens, 2 pairs a prompt
    assert plan[0] == "on-policy rounds plan (DPO_ROUNDS=3), each round:"
    assert plan[1].startswith("  sampling: 30 prompts x 4 samples (DPO_SAMPLES_PER_PROMPT) = 120 samples, at most 64 "
                              "new tokens each") and "sampler transformers" in plan[1]
    assert plan[2] == "  judge: ground-truth, each row's right answer (no model; instant)"
    assert plan[3].startswith("  pairs: at most 60 a round (30 prompts x 2 (DPO_PAIRS_PER_PROMPT)")
    assert plan[4].startswith("  training: DPO_MAX_STEPS=16 a round: 256 pairs at most")  # 16 steps x 2 x 8
    assert plan[5].startswith("  held-out: 2 prompts")
    assert re.fullmatch(r"  memory: the policy's plan 1\.0 GiB training, \d\.\d GiB while sampling \(with its KV "
                        r"cache and prefill\) = 1\.0 GiB on the GPU; fits: .*", plan[6])
    assert "ESTIMATES" in plan[7]
    a100 = next(line for line in plan if line.startswith("| A100 |"))
    # 120 samples x 64 tokens at 150 tokens a second: 51 s of sampling; nothing to judge; training in a blink
    assert a100.startswith("| A100 | 0.014 | 0.000 | 0.000 | 0.014 |")
    assert f"{round(120 * 64 / 150 / 3600, 3)}" == "0.014"


def test_a_model_judge_that_does_not_fit_beside_the_policy_is_exit_2(tmp_path, cache_dir, monkeypatch, capsys):
    """The tiny policy plans 1.0 GiB and fits a 3 GiB GPU alone; a 7B judge (LLaVA-NeXT-Mistral-7B's config.json,
    counted on the meta device: 4.4 GiB in 4-bit) beside it does not."""
    import entrypoint.planning.memory
    from entrypoint.__main__ import main
    from entrypoint.models.shapes import build_shapes

    judge = tmp_path / "llava-next-7b"
    shutil.copytree(build_shapes("llava-next", cache_dir / "shapes" / "llava-next"), judge)
    (judge / "config.json").write_text(full_config("llava-next").to_json_string())
    monkeypatch.setattr(entrypoint.planning.memory, "device_memory_gib", lambda: 3.0)
    for key, value in job_env(cache_dir, tmp_path / "out", **TINY_ROUNDS).items():
        monkeypatch.setenv(key, value)
    assert main(["--dry-run"]) == 0  # the policy alone fits
    capsys.readouterr()
    monkeypatch.setenv("DPO_JUDGE", "model")
    monkeypatch.setenv("DPO_JUDGE_MODEL", str(judge))
    assert main(["--dry-run"]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error.startswith("error: the memory plan needs 5.5 GiB on each GPU (1.0 GiB for the policy + 4.4 GiB for "
                            f"the judge DPO_JUDGE_MODEL={judge} (7.57B parameters, 4bit)), this one has 3.0 GiB")
    assert "a smaller DPO_JUDGE_MODEL, or the judge served elsewhere (DPO_JUDGE=openai" in error
    assert "DPO_MEMORY_CHECK=false" in error


def test_a_model_judge_needs_its_model(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", **TINY_ROUNDS, judge="model",
                             judge_model=str(tmp_path / "nowhere")), "--dry-run")
    assert result.returncode == 2
    assert f"error: DPO_JUDGE_MODEL={tmp_path / 'nowhere'}: no such model directory" in result.stderr


def test_sampling_plans_the_kv_cache_of_a_prompts_copies_and_one_layers_prefill(monkeypatch):
    """LLaVA-NeXT-Mistral-7B's published config: 32 layers, K and V 8 heads x 128 wide, MLP 14,336, hidden 4,096; 10
    answers a prompt of 2,900 tokens (an anyres image) + 256 new: 3.85 GiB of cache, 2.43 GiB of one layer's prefill."""
    from entrypoint.models.architecture import describe
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.lora import lora_config
    from entrypoint.planning.memory import GIB, sampling_gib

    settings = settings_from(monkeypatch, DPO_SAMPLES_PER_PROMPT="10", DPO_SAMPLE_MAX_NEW_TOKENS="256")
    arch = describe(full_config("llava-next"), FAMILIES["llava-next"],
                    lora_config(settings, FAMILIES["llava-next"]))
    assert (arch.layers, arch.kv_size, arch.intermediate_size, arch.hidden_size) == (32, 1024, 14336, 4096)
    kv = 10 * (2900 + 256) * 2 * 32 * 1024 * 2
    prefill = 10 * 2900 * (2 * 14336 + 4 * 4096) * 2
    assert sampling_gib(arch, settings, 2900) == (kv + prefill) / GIB
    assert round(kv / GIB, 2) == 3.85 and round(prefill / GIB, 2) == 2.43


def test_sampling_that_does_not_fit_is_exit_2_naming_the_sampling_settings(tmp_path, cache_dir, monkeypatch, capsys):
    """200 answers a prompt of up to 100,000 tokens: the tiny model's KV cache alone passes 3 GiB."""
    import entrypoint.planning.memory
    from entrypoint.__main__ import main

    monkeypatch.setattr(entrypoint.planning.memory, "device_memory_gib", lambda: 3.0)
    for key, value in job_env(cache_dir, tmp_path / "out", **TINY_ROUNDS, samples_per_prompt="200",
                              sample_max_new_tokens="100000").items():
        monkeypatch.setenv(key, value)
    assert main(["--dry-run"]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert re.match(r"error: the memory plan needs \d+\.\d GiB on each GPU \(\d+\.\d GiB for the policy while it "
                    r"samples\), this one has 3\.0 GiB; to bring it down: fewer DPO_SAMPLES_PER_PROMPT or "
                    r"DPO_SAMPLE_MAX_NEW_TOKENS, or the samples drawn elsewhere \(DPO_SAMPLER=openai", error), error
