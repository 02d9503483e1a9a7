"""Publish the adapter folder (with its model card and plots) to a Hugging Face Hub model repo.

The token is `HF_TOKEN` from the environment (the standard variable; never a setting, so it never
reaches config.json or a tracker).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.logs import duration, size_text
from entrypoint.remote import hub

log = logging.getLogger(__name__)


def _api(api: Any = None) -> Any:
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi(token=hub.token())


def check_hub(repo_id: str) -> None:
    """Start-up check (also in --dry-run): pushing needs the network and a token that may write.

    Without it the job would fail after training. A Hub that cannot be reached right now is only
    a warning: the push is hours away.
    """
    import httpx2

    where = f"DPO_HUB_REPO={repo_id}"
    if not hub.token():
        raise ConfigError(f"{where}: HF_TOKEN is not set (a write token is needed to push)")
    if hub.offline():
        raise ConfigError(f"{where}: pushing needs the network, but HF_HUB_OFFLINE is set")
    try:
        role = _api().whoami()["auth"].get("accessToken", {}).get("role")
    except httpx2.HTTPError as exc:  # an answer (HfHubHTTPError) or none (a connection error)
        if getattr(getattr(exc, "response", None), "status_code", None) == 401:
            raise ConfigError(f"{where}: HF_TOKEN is not a valid token") from None
        log.warning("hub: could not check HF_TOKEN now (%s); pushing after training anyway", str(exc).splitlines()[0])
        return
    if role == "read":
        raise ConfigError(f"{where}: HF_TOKEN is a read-only token; pushing needs a write token")


def publish_adapter(adapter_dir: Path, repo_id: str, private: bool, run_name: str, api: Any = None) -> str:
    """create_repo (private unless told otherwise; an existing repo is reused), then one commit
    of the adapter folder named after the run. Returns the commit URL.

    Repeating it is harmless: the Hub skips a commit that changes no file.
    """
    api = _api(api)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    files = [path for path in adapter_dir.rglob("*") if path.is_file()]
    log.info("hub: uploading %d files (%s) from %s to %s", len(files), size_text(sum(p.stat().st_size for p in files)),
             adapter_dir, repo_id)  # huggingface_hub's own progress bars show on a terminal only
    started = time.monotonic()
    commit = api.upload_folder(folder_path=str(adapter_dir), repo_id=repo_id, repo_type="model",
                               commit_message=f"DPO run {run_name}")
    log.info("hub: %s committed in %s", repo_id, duration(time.monotonic() - started))
    return str(getattr(commit, "commit_url", commit))
