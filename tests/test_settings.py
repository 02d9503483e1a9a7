"""Settings: names, types, ranges, and the one-line errors users see."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import error_from, settings_from
from entrypoint.config.names import REDACTED
from entrypoint.config.settings import Settings, public_dict, trainer_overrides
from entrypoint.config.trainer_fields import dpo_config_fields


def test_defaults_are_the_7b_llava_next_qlora_job(monkeypatch):
    settings = settings_from(monkeypatch)
    assert settings.model == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert settings.dataset == "openbmb/RLAIF-V-Dataset"
    assert settings.quantization == "4bit"
    assert settings.beta == 0.1 and settings.loss_type == ["sigmoid"]


def test_typed_values_are_parsed(monkeypatch):
    settings = settings_from(monkeypatch, DPO_BETA="0.25", DPO_MAX_STEPS="7", DPO_LORA_R="4",
                             DPO_LOSS_TYPE="sigmoid,sft", DPO_LOSS_WEIGHTS="[1, 0.5]", DPO_BF16="false",
                             DPO_QUANTIZATION="none", DPO_MAX_SAMPLES="")
    assert (settings.beta, settings.max_steps, settings.lora_r) == (0.25, 7, 4)
    assert settings.loss_type == ["sigmoid", "sft"] and settings.loss_weights == [1.0, 0.5]
    assert settings.bf16 is False and settings.quantization == "none" and settings.max_samples is None


@pytest.mark.parametrize(("env", "expected"), [
    ({"DPO_LERNING_RATE": "1e-5"}, "DPO_LERNING_RATE: unknown setting; did you mean DPO_LEARNING_RATE?"),
    ({"DPO_BETA": "-1"}, "DPO_BETA='-1': input should be greater than 0"),
    ({"DPO_LORA_R": "0"}, "DPO_LORA_R='0': input should be greater than 0"),
    ({"DPO_QUANTIZATION": "3bit"}, "DPO_QUANTIZATION='3bit': must be one of '4bit', '8bit' or 'none'"),
    ({"DPO_MAX_STEPS": "ten"}, "DPO_MAX_STEPS='ten': input should be a valid integer"),
    ({"DPO_EVAL_FRACTION": "1.5"}, "DPO_EVAL_FRACTION='1.5': input should be less than 1"),
    ({"DPO_LR_SCHEDULER_KWARGS": "{oops"}, "DPO_LR_SCHEDULER_KWARGS='{oops': not valid JSON"),
    ({"DPO_RUN_NAME": "my run"}, "DPO_RUN_NAME='my run': string should match pattern"),
])
def test_bad_settings_name_the_variable_and_what_it_accepts(monkeypatch, env, expected):
    assert error_from(monkeypatch, **env).startswith(expected)


def test_secret_trainer_fields_are_never_echoed(monkeypatch):
    message = error_from(monkeypatch, DPO_HUB_TOKEN="canary-secret", DPO_MAX_STEPS="x")
    assert "canary-secret" not in message
    settings = settings_from(monkeypatch, DPO_HUB_TOKEN="canary-secret", DPO_MAX_STEPS="3")
    assert public_dict(settings)["hub_token"] == REDACTED
    assert "canary-secret" not in repr(public_dict(settings))


def test_every_dpo_config_field_is_a_setting_typed_from_the_dataclass():
    from trl import DPOConfig  # the real class: the static reader must agree with it

    real = {f.name for f in dataclasses.fields(DPOConfig) if f.init and not f.name.startswith("_")}
    assert set(dpo_config_fields()) == real
    settable = real - {"parallelism_config"}  # an object, not expressible as text
    assert settable <= set(Settings.model_fields)


def test_trainer_overrides_construct_a_real_dpo_config(monkeypatch, tmp_path):
    from trl import DPOConfig

    settings = settings_from(monkeypatch, DPO_BETA="0.3", DPO_LOSS_TYPE="sigmoid,sft", DPO_LOSS_WEIGHTS="1,0.2")
    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **trainer_overrides(settings))
    assert config.beta == 0.3 and config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.2]
    assert config.learning_rate == settings.learning_rate == 5e-6


def test_validation_imports_no_torch(monkeypatch):
    """What keeps a bad setting cheap; how long it takes is measured by bench/bench_settings.py."""
    import subprocess
    import sys

    code = ("import sys; from entrypoint.config.settings import load_settings; load_settings(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_pad_token_is_vocabulary_not_a_credential(monkeypatch):
    settings = settings_from(monkeypatch, DPO_PAD_TOKEN="<pad>", DPO_HUB_TOKEN="hf_secret")
    public = public_dict(settings)
    assert public["pad_token"] == "<pad>" and public["hub_token"] == REDACTED
