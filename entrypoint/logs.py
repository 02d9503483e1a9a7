"""Logging for cloud logs: text or JSON lines, secrets masked, progress as plain lines off a terminal.

Everything goes through the root logger's one handler: the job's own lines, the libraries'
(transformers and datasets bring their own handlers, which are removed) and Python warnings. So
DPO_LOG_FORMAT=json gives one JSON object per line for all of it, and the secret mask sees all of it.
Off a terminal the libraries' progress bars are off too: in cloud logs each redraw is a line.

Nothing heavy is imported here before `setup_logging` runs: importing transformers' trainer pulls in
bitsandbytes, which logs a warning at import, and that line must already be formatted and masked.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from functools import cache
from typing import Any

from entrypoint.settings import SECRET_ENV_VARS

MASK = "***"
_LIBRARIES = ("transformers", "datasets")


class SecretMask(logging.Filter):
    """Replaces credential values in every log line and traceback, wherever they come from."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]  # masking "ab" everywhere would hide more than it protects

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self._mask(record.getMessage()), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self._mask(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, and exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry)


def secret_values(extra: list[str] = ()) -> list[str]:
    """Values of the standard credential variables set now, plus `extra` (DPO_* secret settings)."""
    return [os.environ[name] for name in SECRET_ENV_VARS if os.environ.get(name)] + [v for v in extra if v]


def _route_library_logs(progress_bars: bool) -> None:
    """Send the libraries' records to the root handler (format and mask) instead of their own."""
    import datasets.utils.logging as datasets_logging  # importing it installs the handler removed here
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as hf_logging

    hf_logging.disable_default_handler()
    for name in _LIBRARIES:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    logging.captureWarnings(True)
    if not progress_bars:
        hf_logging.disable_progress_bar()
        datasets_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()


def setup_logging(log_format: str = "text", extra_secrets: list[str] = ()) -> None:
    """Root logger at INFO with one stderr handler: text or JSON lines, secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretMask(secret_values(list(extra_secrets))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    _route_library_logs(progress_is_a_bar())


def progress_is_a_bar() -> bool:
    """tqdm bars on a terminal; in cloud logs they are noise (DPOConfig disable_tqdm), so plain lines instead."""
    return sys.stderr.isatty()


def __getattr__(name: str) -> Any:
    """`ProgressLogCallback` is made on first use, so that importing this module imports no trainer."""
    if name == "ProgressLogCallback":
        return _progress_log_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _progress_log_callback() -> type:
    from transformers import TrainerCallback

    class ProgressLogCallback(TrainerCallback):
        """One log line per logging step (step/max, loss, reward accuracy and margin, lr)."""

        KEYS = ("loss", "rewards/accuracies", "rewards/margins", "learning_rate", "eval_loss",
                "eval_rewards/accuracies")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
            if state.is_world_process_zero and logs:
                shown = ", ".join(f"{k} {logs[k]:.4g}" for k in self.KEYS if isinstance(logs.get(k), int | float))
                if shown:
                    where = f"step {state.global_step}/{state.max_steps}" if state.max_steps else "before training"
                    logging.getLogger("entrypoint.progress").info("%s: %s", where, shown)

    return ProgressLogCallback
