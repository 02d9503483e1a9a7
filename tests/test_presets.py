"""Scenario recipes (`DPO_PRESET`): every file loads, the environment overrides them, provenance, loss mixes."""

from __future__ import annotations

import json
import math
import re
import tomllib
from fnmatch import fnmatch

import pytest

from conftest import ROOT, error_from, job_env, run_job, settings_from
from entrypoint.config import presets
from entrypoint.config.origin import sources as setting_sources
from entrypoint.config.settings import Settings, trainer_overrides

MPO = {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}
# What each recipe is for, checked value by value.
IDEAS = {
    "rlaif-v": {"model": "llava-hf/llava-v1.6-mistral-7b-hf", "dataset": "openbmb/RLAIF-V-Dataset"},
    "vqa-rad": {"model": "llava-hf/llava-v1.6-mistral-7b-hf", "dataset": "flaviagiammarino/vqa-rad",
                "dataset_format": "vqa-rad"},
    "text": {"model": "mistralai/Mistral-7B-Instruct-v0.2", "dataset": "HuggingFaceH4/ultrafeedback_binarized",
             "dataset_split": "train_prefs", "image_max_pixels": None},
    "idefics2-rlaif-v": {"model": "HuggingFaceM4/idefics2-8b", "dataset": "openbmb/RLAIF-V-Dataset",
                         "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4,
                         "learning_rate": 5e-5, "num_train_epochs": 1, "lora_target_modules": "all-linear",
                         "lora_vision": False},
    "qwen2.5-vl-mpo": {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "dataset": "openbmb/RLAIF-V-Dataset",
                       **MPO, "image_max_pixels": 1024 * 28 * 28},
    # RLAIF-V's loop (../shared/NOTES.md): 4 rounds, 10 samples a prompt, claims judged by an open VLM, beta 0.1,
    # LoRA lr 1e-5
    "rlaif-v-onpolicy": {"model": "llava-hf/llava-v1.6-mistral-7b-hf", "dataset": "openbmb/RLAIF-V-Dataset",
                         "rounds": 4, "samples_per_prompt": 10, "judge": "model",
                         "judge_model": "llava-hf/llava-v1.6-mistral-7b-hf", "beta": 0.1, "learning_rate": 1e-5},
}
TINY_RUN = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="24", max_steps="3",
                per_device_train_batch_size="4", gradient_accumulation_steps="1", learning_rate="5e-3",
                logging_steps="1", eval_fraction="0.25", eval_generations="0", save_steps="3")


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    return errors[0]


# ---- the recipes


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_loads_validates_and_makes_a_dpo_config(monkeypatch, tmp_path, name):
    from trl import DPOConfig

    text = (presets.PRESET_DIR / f"{name}.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert len(header) >= 2 and presets.summary(name)  # what it is for, and where its values come from
    settings = settings_from(monkeypatch, DPO_PRESET=name)
    written = presets.read(name, Settings.model_fields)
    assert written and settings.preset == name
    for key, value in written.items():
        assert getattr(settings, key) == value, key
    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **trainer_overrides(settings))
    for key in set(written) & set(trainer_overrides(settings)):
        assert getattr(config, key) == written[key], key


def test_the_named_presets_exist():
    assert set(IDEAS) <= set(presets.names())


@pytest.mark.parametrize(("name", "idea"), IDEAS.items())
def test_each_preset_is_what_it_says(monkeypatch, name, idea):
    settings = settings_from(monkeypatch, DPO_PRESET=name)
    assert {key: getattr(settings, key) for key in idea} == idea


def test_preset_files_ship_with_the_package():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in presets.PRESET_DIR.glob("*.yaml"):
        relative = path.relative_to(ROOT / "entrypoint").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in package_data["entrypoint"]), relative


def test_help_lists_the_presets():
    from entrypoint.config import reference

    help_text = reference.text()
    assert all(f"  {name}: {presets.summary(name)}" in help_text for name in presets.names())


# ---- precedence and errors


def test_environment_overrides_the_preset_which_overrides_the_defaults(monkeypatch):
    settings = settings_from(monkeypatch, DPO_PRESET="idefics2-rlaif-v", DPO_LEARNING_RATE="1e-4",
                             DPO_MODEL="tiny:idefics2")
    assert settings.learning_rate == 1e-4 and settings.model == "tiny:idefics2"  # env
    assert settings.gradient_accumulation_steps == 4 and settings.num_train_epochs == 1  # preset
    assert settings.beta == 0.1 and settings.lora_r == 16  # defaults
    sources = setting_sources(settings)
    assert (sources["learning_rate"], sources["gradient_accumulation_steps"], sources["lora_r"]) == (
        "env", "preset idefics2-rlaif-v", "default")


def test_an_empty_variable_unsets_a_preset_value(monkeypatch):
    settings = settings_from(monkeypatch, DPO_PRESET="qwen2.5-vl-mpo", DPO_LOSS_TYPE="sigmoid", DPO_LOSS_WEIGHTS="",
                             DPO_IMAGE_MAX_PIXELS="")
    assert settings.loss_type == ["sigmoid"] and settings.loss_weights is None and settings.image_max_pixels is None


def test_unknown_preset_is_exit_2_listing_the_presets(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", preset="rlaif"), "--dry-run")
    error = one_error_line(result)
    assert error.startswith("error: DPO_PRESET='rlaif': unknown preset (did you mean rlaif-v?); presets: ")
    assert error.endswith(", ".join(presets.names()))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("learning_rate: 5.0e-5\nlerning_rate: 1.0e-5\n", "lerning_rate: unknown setting; did you mean learning_rate?"),
    ("DPO_BETA: 0.2\n", "DPO_BETA: unknown setting; did you mean beta?"),
    ("learning_rate: fast\n", "learning_rate='fast': input should be a valid number"),
    ("quantization: 3bit\n", "quantization='3bit': must be one of '4bit', '8bit' or 'none'"),
    ("loss_type: [sigmoid, bco]\n", "loss_type=['sigmoid', 'bco']: unknown loss 'bco'"),
    ("hub_token: hf_canary\n", "hub_token: a secret; set DPO_HUB_TOKEN in the environment"),
    ("preset: rlaif-v\n", "preset: unknown setting"),
    ("- model\n", "must be a mapping"),
    ("model: [\n", "not valid YAML"),
])
def test_a_bad_preset_file_names_the_file_and_the_key(monkeypatch, tmp_path, content, message):
    (tmp_path / "broken.yaml").write_text("# a broken recipe\n" + content)
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    error = error_from(monkeypatch, DPO_PRESET="broken")
    assert error.startswith(f"preset broken ({tmp_path / 'broken.yaml'}): ") and message in error
    assert "hf_canary" not in error


def test_a_bad_value_in_the_environment_is_still_the_environments(monkeypatch):
    error = error_from(monkeypatch, DPO_PRESET="rlaif-v", DPO_LEARNING_RATE="fast")
    assert error.startswith("DPO_LEARNING_RATE='fast': input should be a valid number")


# ---- provenance


def test_dry_run_prints_each_setting_with_where_it_came_from(tmp_path, cache_dir):
    env = job_env(cache_dir, tmp_path / "out", preset="rlaif-v", model="tiny:llava-next", dataset="sample:rlaif-v",
                  hub_token="hf_canary_secret", max_samples="24")
    result = run_job(env, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = {line.split()[0]: line for line in lines if line.startswith("  DPO_")}

    def row(var: str, source: str, value: str) -> bool:
        return re.fullmatch(rf"  {var} +{re.escape(source)} +{re.escape(value)}", table[var]) is not None

    assert row("DPO_MODEL", "env", "tiny:llava-next")
    assert row("DPO_LEARNING_RATE", "preset rlaif-v", "5e-06")
    assert row("DPO_NUM_TRAIN_EPOCHS", "preset rlaif-v", "1.0")
    assert row("DPO_SEED", "default", "42") and row("DPO_MAX_LENGTH", "default", "4096")
    assert row("DPO_HUB_TOKEN", "env", "***") and "hf_canary_secret" not in result.stdout + result.stderr
    assert len({line.index(line.split()[1]) for line in table.values()}) == 1  # the source column is aligned
    assert "DPO_ADAM_BETA1" not in table  # TRL's own defaults are not repeated
    assert "dry run" in result.stderr and not (tmp_path / "out").exists()


# ---- loss mixes (TRL 1.x: loss_type list[str], loss_weights list[float])


@pytest.mark.parametrize(("loss_type", "loss_weights"), [
    ("sigmoid,bco_pair,sft", "0.8,0.2,1.0"),
    ("sigmoid, bco_pair, sft", "0.8, 0.2, 1"),
    ('["sigmoid","bco_pair","sft"]', "[0.8, 0.2, 1]"),
])
def test_loss_mixes_reach_the_jobs_dpo_config_as_typed_lists(monkeypatch, tmp_path, loss_type, loss_weights):
    from entrypoint.job import training_args
    from entrypoint.models.families import FAMILIES
    from entrypoint.run.paths import run_paths

    settings = settings_from(monkeypatch, DPO_LOSS_TYPE=loss_type, DPO_LOSS_WEIGHTS=loss_weights,
                             DPO_OUTPUT_DIR=str(tmp_path))
    args = training_args(settings, run_paths(settings), FAMILIES["llava-next"])
    assert args.loss_type == MPO["loss_type"] and all(type(name) is str for name in args.loss_type)
    assert args.loss_weights == MPO["loss_weights"] and all(type(w) is float for w in args.loss_weights)


def test_an_unknown_loss_is_refused_with_the_settings(monkeypatch):
    # DPOConfig accepts any name; DPOTrainer would fail on it at its first step, with the model loaded
    error = error_from(monkeypatch, DPO_LOSS_TYPE="sigmoid,bco-pair")
    assert error.startswith("DPO_LOSS_TYPE='sigmoid,bco-pair': unknown loss 'bco-pair'; TRL's losses: sigmoid,")
    assert error_from(monkeypatch, DPO_LOSS_TYPE=" ").startswith("DPO_LOSS_TYPE=' ': name at least one loss")


def test_known_losses_are_the_ones_dpo_trainer_computes():
    import importlib.util
    from pathlib import Path

    from entrypoint.config.trainer_fields import dpo_config_fields

    trainer = Path(importlib.util.find_spec("trl").origin).parent / "trainer" / "dpo_trainer.py"
    computed = set(re.findall(r'loss_type == "(\w+)"', trainer.read_text()))
    listed = set(re.findall(r"`'(\w+)'`", dpo_config_fields()["loss_type"].help))
    assert computed and listed == computed


def test_more_losses_than_weights_is_exit_2_before_the_model_loads(tmp_path, cache_dir):
    # TRL's DPOConfig refuses it when built, which the job does before loading the model
    env = job_env(cache_dir, tmp_path / "out", **TINY_RUN, loss_type="sigmoid,bco_pair,sft", loss_weights="0.8,0.2")
    error = one_error_line(run_job(env))
    assert "training settings: `loss_weights` must have the same length as `loss_type`" in error
    assert "Got 2 weights for 3 loss types" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_mpo_mix_trains(tmp_path, cache_dir):
    output = tmp_path / "run"
    result = run_job(job_env(cache_dir, output, **TINY_RUN, loss_type="sigmoid,bco_pair,sft",
                             loss_weights="0.8,0.2,1.0"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3 and math.isfinite(metrics["train"]["train_loss"])
    steps = [entry for entry in metrics["history"] if "loss" in entry and "eval_loss" not in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in steps)
    # TRL logs the mix's total only. Before training the policy is the reference: sigmoid is ln 2, bco_pair
    # 2 ln 2, so anything above 0.8 ln 2 + 0.2 * 2 ln 2 is the SFT term (the chosen answers' NLL) in the mix.
    before = metrics["eval_before"]
    assert before["loss"] > 1.2 * math.log(2) + 1 and abs(before["rewards/margins"]) < 1e-6
    assert metrics["eval_after"]["loss"] < before["loss"]
    config = json.loads((output / "config.json").read_text())
    assert config["dpo_config"]["loss_type"] == MPO["loss_type"]
    assert config["dpo_config"]["loss_weights"] == MPO["loss_weights"]
    assert config["sources"]["loss_type"] == "env" and config["sources"]["seed"] == "default"
