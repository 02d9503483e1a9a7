"""The Hugging Face Hub as the job reaches it: the one place that reads the token and the offline switch."""

from __future__ import annotations

import os


def token() -> str | None:
    """`HF_TOKEN`, or the older `HUGGING_FACE_HUB_TOKEN`; None when neither is set (public repos only)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def offline() -> bool:
    """`HF_HUB_OFFLINE`, as huggingface_hub read it: the Hub cannot be asked, a cached copy may still load."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())
