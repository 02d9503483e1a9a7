"""Logging for cloud logs: text or JSON lines, secrets masked, progress as plain lines off a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from transformers import TrainerCallback

from entrypoint.settings import SECRET_ENV_VARS

MASK = "***"


class SecretMask(logging.Filter):
    """Replaces the values of credential variables in every log line, wherever they come from."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, MASK)
            record.msg, record.args = message, ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def secret_values(extra: list[str] = ()) -> list[str]:
    return [os.environ[name] for name in SECRET_ENV_VARS if os.environ.get(name)] + [v for v in extra if v]


def setup_logging(log_format: str = "text", extra_secrets: list[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretMask(secret_values(list(extra_secrets))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def progress_is_a_bar() -> bool:
    """tqdm bars on a terminal; in cloud logs they are noise, so plain lines instead."""
    return sys.stderr.isatty()


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
