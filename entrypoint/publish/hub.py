"""Publish the adapter folder (with its model card and plots) to a Hugging Face Hub model repo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError


def _api(api: Any = None) -> Any:
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi(token=os.environ.get("HF_TOKEN"))


def check_hub(repo_id: str) -> None:
    """Start-up check: pushing needs a token; without one the job would fail after training."""
    if not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise ConfigError(f"DPO_HUB_REPO={repo_id}: HF_TOKEN is not set (a write token is needed to push)")


def publish_adapter(adapter_dir: Path, repo_id: str, private: bool, run_name: str, api: Any = None) -> str:
    """create_repo (private unless told otherwise; an existing repo is reused), then one commit
    of the adapter folder named after the run. Returns the commit URL."""
    api = _api(api)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(adapter_dir), repo_id=repo_id, repo_type="model",
                               commit_message=f"DPO run {run_name}")
    return str(getattr(commit, "commit_url", commit))
