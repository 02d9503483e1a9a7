"""DPO_TRAIN_PROJECTOR: the projector trained in full (PEFT modules_to_save) while the vision tower stays
frozen; the adapter carries the projector's weights and reloads into the model that was trained."""

from __future__ import annotations

import json

import pytest
from test_job_end_to_end import DEMO

from conftest import job_env, run_job, start_job, wait_for

PROJECTOR = "model.multi_modal_projector"
SAVED = f"base_model.model.{PROJECTOR}."  # adapter_model.safetensors keys of the projector's full weights
# Reloaded base + adapter against the trained model's eval log-probs (sums over ~20-token answers, about -100):
# the same model on the same kernels gives the same numbers (0 measured); the base's projector moves them by
# about 0.13, over 100 times this.
LOGPS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def projector_run(tmp_path_factory, cache_dir):
    output = tmp_path_factory.mktemp("projector")
    result = run_job(job_env(cache_dir, output, **DEMO, train_projector="true", merge="true"))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def _job_settings(monkeypatch, cache_dir, output, **settings):
    from entrypoint.config.settings import load_settings

    for key, value in job_env(cache_dir, output, **settings).items():
        if key.startswith("DPO_"):
            monkeypatch.setenv(key, value)
    return load_settings()


def _prepared(output):
    from entrypoint.data.prepare import load_prepared

    state = json.loads((output / "checkpoints" / "state.json").read_text())
    return load_prepared(output / "checkpoints" / "prepared", state["stages"]["prepared"])


def test_adapter_holds_the_projector_in_full_and_lora_but_not_the_vision_tower(projector_run, cache_dir):
    from safetensors.torch import load_file

    weights = load_file(projector_run / "adapter" / "adapter_model.safetensors")
    base = load_file(cache_dir / "tiny" / "llava-next" / "model.safetensors")
    projector = {k.removeprefix(SAVED): t for k, t in weights.items() if k.startswith(SAVED)}
    base_projector = {k.removeprefix("multi_modal_projector."): t for k, t in base.items()
                      if k.startswith("multi_modal_projector.")}
    assert set(projector) == set(base_projector) == {"linear_1.weight", "linear_1.bias", "linear_2.weight",
                                                     "linear_2.bias"}
    for name, tensor in projector.items():  # full weights, kept in fp32, and trained
        assert tensor.shape == base_projector[name].shape and tensor.dtype.is_floating_point
        assert (tensor.float() - base_projector[name].float()).abs().max() > 1e-3, name
    assert all(t.dtype.itemsize == 4 for t in projector.values())  # fp32: bf16 would lose the updates
    lora = [k for k in weights if "lora_" in k]
    assert lora and all("language_model" in k for k in lora)  # LoRA on the language model only
    assert not any("vision_tower" in k for k in weights)
    assert len(weights) == len(lora) + len(projector)
    config = json.loads((projector_run / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [PROJECTOR]


def test_trainer_trains_the_projector_in_full_and_keeps_the_vision_tower_frozen(projector_run, cache_dir, tmp_path,
                                                                                 monkeypatch):
    import torch

    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.run.paths import run_paths
    from entrypoint.training.trainer import build_trainer, dpo_config

    settings = _job_settings(monkeypatch, cache_dir, projector_run, **DEMO, train_projector="true")
    paths = run_paths(settings)
    ref = resolve_model(settings.model, "auto", None, paths.cache_dir)
    processor = load_processor(ref)
    data = _prepared(projector_run)
    args = dpo_config(settings, tmp_path, "projector")
    trainer = build_trainer(settings, load_model(ref, "4bit", processor=processor), ref.family, processor,
                            data.train, data.eval, args)
    params = dict(trainer.model.named_parameters())
    tower = {n: p for n, p in params.items() if ".vision_tower." in n}
    copy = {n: p for n, p in params.items() if f"{PROJECTOR}.modules_to_save.default." in n}
    original = {n: p for n, p in params.items() if f"{PROJECTOR}.original_module." in n}
    assert tower and not any(p.requires_grad for p in tower.values())
    assert original and not any(p.requires_grad for p in original.values())  # the reference's projector
    assert len(copy) == len(original) == 4
    assert all(p.requires_grad and p.dtype == torch.float32 for p in copy.values())
    trainable = {n for n, p in params.items() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n and ".language_model." in n}
    assert lora and trainable == set(copy) | lora


def test_adapter_reloaded_with_peft_is_the_trained_model(projector_run, cache_dir, tmp_path, monkeypatch):
    """Base (loaded as training loaded it) + adapter via PeftModel.from_pretrained, evaluated on the eval pairs
    with TRL as the job evaluated the trained model: the same policy log-probs as metrics.json's eval_after."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from trl import DPOTrainer

    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.run.paths import run_paths
    from entrypoint.training.trainer import dpo_config

    settings = _job_settings(monkeypatch, cache_dir, projector_run, **DEMO, train_projector="true")
    ref = resolve_model(settings.model, "auto", None, run_paths(settings).cache_dir)
    processor = load_processor(ref)
    model = PeftModel.from_pretrained(load_model(ref, "4bit", processor=processor), projector_run / "adapter")
    projector = model.base_model.model.model.multi_modal_projector
    saved = load_file(projector_run / "adapter" / "adapter_model.safetensors")
    for name, tensor in projector.modules_to_save["default"].state_dict().items():
        assert torch.equal(tensor, saved[SAVED + name]), name
    data = _prepared(projector_run)
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(settings, tmp_path, "reload"),
                         train_dataset=data.train, eval_dataset=data.eval, processing_class=processor)
    after = json.loads((projector_run / "metrics.json").read_text())["eval_after"]
    reloaded = trainer.evaluate()
    for key in ("logps/chosen", "logps/rejected"):
        assert abs(reloaded[f"eval_{key}"] - after[key]) <= LOGPS_TOLERANCE, key
    projector.enable_adapters(False)  # the check can fail: the base's projector instead of the trained one
    with_base_projector = trainer.evaluate()
    assert abs(with_base_projector["eval_logps/chosen"] - after["logps/chosen"]) > 20 * LOGPS_TOLERANCE


def test_merged_model_carries_the_trained_projector(projector_run):
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaNextForConditionalGeneration

    adapter = load_file(projector_run / "adapter" / "adapter_model.safetensors")
    merged = LlavaNextForConditionalGeneration.from_pretrained(projector_run / "merged")
    projector = merged.model.multi_modal_projector.state_dict()
    assert set(projector) == {k.removeprefix(SAVED) for k in adapter if k.startswith(SAVED)}
    for name, tensor in projector.items():  # the trained fp32 weights, cast to bf16 once
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, adapter[SAVED + name].to(torch.bfloat16)), name


def test_a_run_killed_and_restarted_ends_with_the_same_adapter_projector_included(projector_run, cache_dir,
                                                                                   tmp_path):
    """The projector's fp32 weights and AdamW state go through the checkpoint and back exactly."""
    from entrypoint.run import checkpoints
    from entrypoint.run.outputs import sha256_file

    output = tmp_path / "killed"
    env = job_env(cache_dir, output, **DEMO, train_projector="true", merge="true")
    process = start_job(env)
    wait_for(output / "checkpoints" / "checkpoint-3" / checkpoints.COMPLETE_MARKER, process)
    assert process.poll() is None, "finished before it could be killed"
    process.kill()
    process.wait()
    restarted = run_job(env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming from" in restarted.stderr
    adapter = "adapter/adapter_model.safetensors"
    assert sha256_file(output / adapter) == sha256_file(projector_run / adapter)


def test_a_text_only_family_is_a_config_error(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", **{**DEMO, "model": "tiny:causal-lm",
                                                             "dataset": "sample:text", "train_projector": "true"}))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DPO_TRAIN_PROJECTOR" in errors[0] and "text-only" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_the_setting_is_part_of_what_a_checkpoint_was_trained_with(tmp_path, monkeypatch):
    from entrypoint.config.settings import load_settings
    from entrypoint.errors import ConfigError
    from entrypoint.run.state import _NOT_TRAINING, RunState

    assert "train_projector" not in _NOT_TRAINING and "merge" in _NOT_TRAINING
    RunState.open(tmp_path, load_settings()).mark("prepared")
    monkeypatch.setenv("DPO_MERGE", "true")  # what is written after training: resuming is fine
    RunState.open(tmp_path, load_settings())
    monkeypatch.setenv("DPO_TRAIN_PROJECTOR", "true")
    with pytest.raises(ConfigError, match="DPO_TRAIN_PROJECTOR: False -> True"):
        RunState.open(tmp_path, load_settings())


def test_the_memory_plan_counts_the_projector_trained_in_full(monkeypatch):
    """On the published LLaVA-NeXT 7B: the projector's 21M parameters, a second fp32 copy with fp32 gradients and
    AdamW moments (16 bytes each), beside LoRA's unchanged count."""
    from entrypoint.config.settings import load_settings
    from entrypoint.models.architecture import describe
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.lora import lora_config
    from entrypoint.models.published import full_config
    from entrypoint.planning.memory import GIB, Workload, plan_memory

    family = FAMILIES["llava-next"]
    plain = describe(full_config("llava-next"), family, lora_config(load_settings(), family))
    monkeypatch.setenv("DPO_TRAIN_PROJECTOR", "true")
    projector = describe(full_config("llava-next"), family, lora_config(load_settings(), family))
    assert plain.full_params == 0
    assert projector.full_params == 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # linear_1 and linear_2, with biases
    assert projector.lora_params == plain.lora_params and projector.params == plain.params
    work = Workload(batch=1, length=2048, answer_tokens=100)
    extra = plan_memory(projector, "4bit", work).adapter_and_optimizer - plan_memory(plain, "4bit", work) \
        .adapter_and_optimizer
    assert extra == pytest.approx(projector.full_params * 16 / GIB)
