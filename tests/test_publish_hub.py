"""Hub publishing at the HfApi boundary (no network): repo creation, the commit, the model card."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint.errors import ConfigError
from entrypoint.publish.hub import check_hub, publish_adapter


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records calls, reads the folder as the real one would."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        files = {p.relative_to(kwargs["folder_path"]).as_posix(): p.read_bytes()
                 for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        return type("Commit", (), {"commit_url": f"https://hub/{kwargs['repo_id']}/commit/1"})()


def test_creates_a_private_repo_then_one_named_commit_with_the_card(tmp_path):
    adapter = tmp_path / "adapter"
    (adapter / "plots").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "README.md").write_text("---\nlibrary_name: peft\n---\n# card\n![loss](plots/loss.png)\n")
    (adapter / "plots" / "loss.png").write_bytes(b"png")
    api = RecordingApi()
    url = publish_adapter(adapter, "org/model", private=True, run_name="run-7", api=api)
    (create, repo), (upload, commit) = api.calls
    assert (create, upload) == ("create_repo", "upload_folder")
    assert repo == {"repo_id": "org/model", "repo_type": "model", "private": True, "exist_ok": True}
    assert commit["repo_id"] == "org/model" and commit["commit_message"] == "DPO run run-7"
    assert set(commit["files"]) == {"adapter_model.safetensors", "README.md", "plots/loss.png"}
    assert url == "https://hub/org/model/commit/1"
    publish_adapter(adapter, "org/model", private=False, run_name="run-7", api=api)
    assert api.calls[2][1]["private"] is False


def test_pushing_without_a_token_is_a_startup_error(monkeypatch):
    with pytest.raises(ConfigError, match="DPO_HUB_REPO=org/model: HF_TOKEN is not set"):
        check_hub("org/model")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    check_hub("org/model")


def test_the_card_carries_metadata_settings_metrics_plots_and_loading(tmp_path, monkeypatch):
    from entrypoint.card import render
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.loading import ModelRef
    from entrypoint.settings import load_settings

    monkeypatch.setenv("DPO_BETA", "0.2")
    settings = load_settings()
    metrics = {"train": {"global_step": 10},
               "eval_before": {"loss": 0.6931, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
               "eval_after": {"loss": 0.5, "rewards/accuracies": 0.75, "rewards/margins": 0.3}}
    card = render(settings, ModelRef(settings.model, FAMILIES["llava-next"]),
                  {"train_pairs": 9, "eval_pairs": 1, "format": "rlaif-v"}, metrics, ["plots/loss.png"])
    front = card.split("---")[1]
    for line in ("base_model: llava-hf/llava-v1.6-mistral-7b-hf", "library_name: peft", "- dpo", "- trl",
                 "- llava-next", "- qlora", "- openbmb/RLAIF-V-Dataset"):
        assert line in front
    assert "| `beta` | `0.2` |" in card
    assert "| rewards/accuracies | 0.0000 | 0.7500 |" in card
    assert "![loss](plots/loss.png)" in card
    assert "PeftModel.from_pretrained" in card
