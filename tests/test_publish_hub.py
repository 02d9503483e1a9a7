"""Hub publishing with the real HfApi, its HTTP answered in-process (no network): the token used,
repo creation and visibility, the commit and its files, the model card's metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx2
import pytest
import yaml
from fake_hub import TOKEN, FakeHub
from huggingface_hub import constants
from huggingface_hub.utils import _http

from entrypoint.errors import ConfigError
from entrypoint.evaluation.comparison import comparison
from entrypoint.publish.hub import check_hub, publish_adapter


@pytest.fixture
def hub(monkeypatch):
    """In process: hf_xet's own HTTP client would miss the mock transport, so LFS files take the LFS batch API
    here (tests/test_publish_end_to_end.py runs Xet against the fake over HTTP)."""
    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    yield fake
    _http.set_client_factory(_http.default_client_factory)


def card_and_adapter(tmp_path: Path, monkeypatch) -> Path:
    """An adapter folder as write_results leaves it: weights, config, the real model card, plots."""
    from entrypoint.config.settings import load_settings
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.loading import ModelRef
    from entrypoint.results.card import write_model_card

    monkeypatch.setenv("DPO_BETA", "0.2")
    monkeypatch.setenv("DPO_HUB_TOKEN", "canary-setting-token-0123")
    settings = load_settings()
    adapter = tmp_path / "adapter"
    (adapter / "plots").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "plots" / "loss.png").write_bytes(b"\x89PNG")
    metrics = {"train": {"global_step": 10},
               "eval_before": {"loss": 0.6931, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
               "eval_after": {"loss": 0.5, "rewards/accuracies": 0.75, "rewards/margins": 0.3}}
    metrics["comparison"] = comparison({"pairs": 4}, metrics["eval_before"], metrics["eval_after"])
    write_model_card(adapter, settings, ModelRef(settings.model, FAMILIES["llava-next"]),
                     {"train_pairs": 9, "eval_pairs": 1, "format": "rlaif-v"}, metrics, ["plots/loss.png"])
    return adapter


def test_creates_a_private_repo_then_one_commit_named_after_the_run(tmp_path, monkeypatch, hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    adapter = card_and_adapter(tmp_path, monkeypatch)
    url = publish_adapter(adapter, "org/model", private=True, run_name="run-7")
    assert hub.created == [{"name": "model", "organization": "org", "visibility": "private", "type": "model"}]
    (commit,) = hub.commits
    assert commit["path"] == "/api/models/org/model/commit/main" and commit["message"] == "DPO run run-7"
    assert commit["authorization"] == f"Bearer {TOKEN}"
    assert set(commit["files"]) == {"adapter_model.safetensors", "adapter_config.json", "README.md"}  # small text
    assert commit["lfs"] == {"plots/loss.png": {"sha256": hashlib.sha256(b"\x89PNG").hexdigest(), "size": 4}}
    assert hub.lfs_objects == {commit["lfs"]["plots/loss.png"]["sha256"]: b"\x89PNG"}  # the LFS batch API's PUT
    assert url == "https://huggingface.co/org/model/commit/abc"
    publish_adapter(adapter, "org/model", private=False, run_name="run-7")
    assert hub.created[-1]["visibility"] == "public"


def test_the_pushed_card_carries_metadata_settings_metrics_plots_and_no_secret(tmp_path, monkeypatch, hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    publish_adapter(card_and_adapter(tmp_path, monkeypatch), "org/model", private=True, run_name="run-7")
    card = hub.commits[0]["files"]["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "llava-hf/llava-v1.6-mistral-7b-hf" and meta["library_name"] == "peft"
    assert {"trl", "dpo", "llava-next", "qlora"} <= set(meta["tags"])
    assert meta["datasets"] == ["openbmb/RLAIF-V-Dataset"]
    assert "| `beta` | `0.2` |" in card
    assert "| DPO reward accuracy | 0.0000 | 0.7500 | 4 |" in card
    assert "## Training curves\n\n![loss](plots/loss.png)" in card
    assert "PeftModel.from_pretrained" in card
    sent = b"".join(r.content + str(r.url).encode() for r in hub.requests)
    assert b"canary-setting-token-0123" not in sent


@pytest.mark.parametrize(("token", "role", "message"), [
    (None, "write", "HF_TOKEN is not set"),
    ("hf_wrong", "write", "HF_TOKEN is not a valid token"),
    (TOKEN, "read", "read-only token"),
])
def test_a_token_that_cannot_push_is_a_startup_error(monkeypatch, hub, token, role, message):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    hub.role = role
    with pytest.raises(ConfigError, match=f"DPO_HUB_REPO=org/model: .*{message}"):
        check_hub("org/model")


def test_a_write_token_passes_and_offline_mode_is_refused(monkeypatch, hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    check_hub("org/model")
    assert [r.url.path for r in hub.requests if r.url.path.startswith("/api/whoami")] == ["/api/whoami-v2"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="needs the network, but HF_HUB_OFFLINE is set"):
        check_hub("org/model")


def test_an_unreachable_hub_at_startup_is_only_a_warning(monkeypatch, hub, caplog):
    def refuse(request):
        raise httpx2.ConnectError("connection refused", request=request)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    check_hub("org/model")
    assert "could not check HF_TOKEN now" in caplog.text
