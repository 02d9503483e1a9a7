"""Logging for cloud logs: text or JSON lines, secrets masked, progress as plain lines off a terminal.

Everything goes through the root logger's one handler: the job's own lines, the libraries'
(transformers and datasets bring their own handlers, which are removed) and Python warnings. So
DPO_LOG_FORMAT=json gives one JSON object per line for all of it, and the secret mask sees all of it.
Off a terminal the libraries' progress bars are off too: in cloud logs each redraw is a line. The job's
long stages report through `progress` instead: a tqdm bar on a terminal, a line every ~10 s otherwise.
A Python warning is logged once per process, and the few library warnings that cannot be fixed at their
cause are filtered (`_UNFIXABLE_WARNINGS`).

Nothing heavy is imported here before `setup_logging` runs: importing transformers' trainer pulls in
bitsandbytes, which logs a warning at import, and that line must already be formatted and masked.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MASK = "***"
# Environment variables that hold credentials, by their standard names: masked wherever they appear.
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_LIBRARIES = ("transformers", "datasets")
PROGRESS_EVERY = 10.0  # seconds between two plain progress lines
progress_log = logging.getLogger("entrypoint.progress")

# Library warnings the job cannot fix at their cause: (message regex, category, module regex), each exact.
_UNFIXABLE_WARNINGS = (
    # transformers 5 renamed gradient checkpointing to activation checkpointing, and the old model methods warn
    # on every call. The job uses the new names (training/trainer.py, dpo_config); the calls left are the libraries':
    # TRL's `trl.models.utils.disable_gradient_checkpointing` (around the reference model's forward pass, every
    # training step and evaluation batch), PEFT's `PeftModel.__init__` (is_gradient_checkpointing) and
    # `prepare_model_for_kbit_training` (gradient_checkpointing_enable).
    (r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated",
     FutureWarning, r"transformers\.modeling_utils"),
)

# Library log lines that are wrong for this job: (logger, start of the message).
_MISLEADING_LOG_LINES = (
    # On resume, the Trainer warns that logging/eval/save steps differ from the checkpoint's and keeps the
    # checkpoint's; the job applies this run's instead (CheckpointCallback.on_train_begin, training/callbacks.py) and
    # says so.
    ("transformers.trainer_utils", "Warning: The following arguments do not match the ones in the `trainer_state"),
)


class DropLines(logging.Filter):
    """Drops the records of `lines`: (logger name, start of the message)."""

    def __init__(self, lines: tuple[tuple[str, str], ...]):
        super().__init__()
        self.lines = lines

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and record.getMessage().startswith(start) for name, start in self.lines)


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


class OncePerProcess(logging.Filter):
    """Each Python warning (logger `py.warnings`) is logged once per process, keyed on its first line (where and
    what). The warnings module's own once-per-location memory is dropped whenever a library changes the warnings
    filters (each `catch_warnings` block, `resetwarnings`), and some warnings come from code run every step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage().partition("\n")[0]
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


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
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.filters = [f for f in py_warnings.filters if not isinstance(f, OncePerProcess)] + [OncePerProcess()]
    for message, category, module in _UNFIXABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in {name for name, _ in _MISLEADING_LOG_LINES}:
        library = logging.getLogger(name)
        library.filters = [f for f in library.filters if not isinstance(f, DropLines)] + [
            DropLines(_MISLEADING_LOG_LINES)]
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


def duration(seconds: float) -> str:
    """`3.1 s`, `4 min 05 s`, `2 h 07 min`."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _scale(value: float, unit: str) -> tuple[float, str]:
    """Bytes (unit "B") in the binary unit that suits `value`; anything else as it is."""
    if unit == "B":
        for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
            if value >= 1024.0 ** power:
                return 1024.0 ** power, name
    return 1.0, unit


def _amount(done: float, total: float, unit: str) -> str:
    """`12/50 rows`, `1.5/12.0 MiB`."""
    scale, name = _scale(total, unit)
    digits = 1 if scale > 1 else 0
    return f"{done / scale:,.{digits}f}/{total / scale:,.{digits}f} {name}"


def size_text(size: float) -> str:
    """`512 B`, `12.3 MiB`."""
    scale, name = _scale(size, "B")
    return f"{size / scale:.{1 if scale > 1 else 0}f} {name}"


def _rate(per_second: float, unit: str) -> str:
    """`480.0 rows/s`, `4.0 MiB/s`; below one a second, `31.5 s each`."""
    if per_second < 1 and unit != "B":
        return f"{duration(1 / per_second)} each"
    scale, name = _scale(per_second, unit)
    return f"{per_second / scale:,.1f} {name}/s"


def timing(elapsed: float, done: int, left: int) -> str:
    """`3.1 s elapsed, ETA 9.8 s`: the time left for `left` more items at the pace of the `done` so far."""
    eta = duration(elapsed * max(left, 0) / done) if done > 0 else "?"
    return f"{duration(elapsed)} elapsed, ETA {eta}"


class _ProgressLines:
    """The plain-line side of `progress`; thread-safe (boto3 reports bytes from its transfer threads)."""

    def __init__(self, what: str, total: int, unit: str, every: float, clock: Callable[[], float]):
        self.what, self.total, self.unit, self.every, self.clock = what, total, unit, every, clock
        self.done = 0
        self.started = self.last_line = clock()
        self.finished = False  # the last item's line was logged
        self.lock = threading.Lock()

    def __call__(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            now = self.clock()
            last = self.done >= self.total and not self.finished
            if not (last or now - self.last_line >= self.every):
                return
            self.finished, self.last_line = self.finished or last, now
            elapsed = now - self.started
            percent = f" ({100 * self.done // self.total}%)" if self.total else ""
            progress_log.info("%s: %s%s, %s", self.what, _amount(self.done, self.total, self.unit), percent,
                              timing(elapsed, self.done, self.total - self.done))

    def close(self) -> None:
        elapsed = self.clock() - self.started
        rate = f" ({_rate(self.done / elapsed, self.unit)})" if elapsed > 0 and self.done > 0 else ""
        progress_log.info("%s: %s in %s%s", self.what, _amount(self.done, self.total, self.unit), duration(elapsed),
                          rate)


@contextmanager
def progress(what: str, total: int, unit: str, *, every: float = PROGRESS_EVERY,
             clock: Callable[[], float] = time.monotonic) -> Iterator[Callable[[int], None]]:
    """Progress of a long stage; yields `advance(n=1)`, to call as items (or bytes) are done, from any thread.

    On a terminal a tqdm bar. Otherwise (cloud logs) lines from logger `entrypoint.progress`, at most one every
    `every` seconds and one at the last item: `<what>: 12/50 <unit> (24%), 3.1 s elapsed, ETA 9.8 s`; then, when
    the block ends without an error, `<what>: 50/50 <unit> in 12.5 s (4.0 <unit>/s)`. Bytes (unit "B") are shown
    in KiB, MiB or GiB."""
    if progress_is_a_bar():
        from tqdm import tqdm

        scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        bar = tqdm(total=total, desc=what, unit=unit if unit == "B" else f" {unit}", **scaled)
        lock = threading.Lock()

        def advance(n: int = 1) -> None:
            with lock:
                bar.update(n)

        try:
            yield advance
        finally:
            bar.close()
        return
    lines = _ProgressLines(what, total, unit, every, clock)
    yield lines
    lines.close()
