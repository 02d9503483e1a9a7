"""The settings reference, generated from the one declaration in settings.py.

`python -m entrypoint --help` prints it as text; `make docs` writes it as Markdown into the README
(entrypoint/docs.py; a test checks the README is current).
"""

from __future__ import annotations

import json
from typing import Any

from entrypoint.config import presets
from entrypoint.config.names import env_name
from entrypoint.config.settings import TRAINING_DEFAULTS, Settings, is_secret, is_trainer_field
from entrypoint.config.trainer_fields import dpo_config_fields

USAGE = """usage: python -m entrypoint [--dry-run] [--from-run RUN] [--help]

Preference-tune a (vision-)language model with DPO + QLoRA, configured by environment variables.

  --dry-run        validate the settings, the model and data references (and credentials), then exit
  --from-run RUN   run a finished run again (its directory, manifest.json, or s3://.../manifest.json): its
                   recorded settings under any DPO_* variable set, Hub revisions pinned; exit 2 if its base
                   model or data changed (DPO_ALLOW_DRIFT=1 runs anyway)
  --help           show this reference

Exit codes: 0 done; 2 bad setting or input (found before any model is loaded); 3 out of GPU memory (the
message names the step, the batch and the settings that lower memory); 75 stopped by SIGTERM after saving a
checkpoint (run again to resume); 1 a bug.
"""


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("NoneType", "None")


def _default(name: str) -> str:
    value = Settings.model_fields[name].default
    if value is None and is_trainer_field(name):  # e.g. `default_optim`: not a literal, shown as written
        return dpo_config_fields()[name].default_text
    return "(unset)" if value is None else json.dumps(value, default=str)


def rows(trainer: bool) -> list[tuple[str, str, str, str]]:
    """(variable, type, default, help) for job settings or for DPOConfig passthrough fields."""
    out = []
    for name, field in Settings.model_fields.items():
        if is_trainer_field(name) != trainer:
            continue
        help_text = (field.description or "") + (" Secret: never logged or saved." if is_secret(name) else "")
        out.append((env_name(name), _type_name(field.annotation), _default(name), help_text))
    return out


def text() -> str:
    lines = [USAGE, "Job settings:"]
    for var, kind, default, help_text in rows(trainer=False):
        lines += [f"  {var}  ({kind}, default {default})", f"      {help_text}"]
    lines += ["", "Training settings: every field of TRL's DPOConfig, as DPO_<FIELD>:"]
    for var, kind, default, help_text in rows(trainer=True):
        lines += [f"  {var}  ({kind}, default {default})", f"      {help_text}"]
    lines += ["", "Presets (DPO_PRESET=<name>; any DPO_* variable overrides them):"]
    lines += [f"  {name}: {summary}" for name, summary in _presets()]
    lines += ["", "Standard variables: HF_TOKEN, WANDB_API_KEY, WANDB_PROJECT, WANDB_MODE, AWS_* (secrets are "
              "never logged or saved)."]
    return "\n".join(lines) + "\n"


def markdown() -> str:
    def table(entries: list[tuple[str, str, str, str]]) -> list[str]:
        lines = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
        for var, kind, default, help_text in entries:
            cells = [f"`{var}`", f"`{kind}`", f"`{default}`", help_text]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return lines

    job = table(rows(trainer=False))
    trainer_rows = rows(trainer=True)
    return "\n".join([
        "### Job settings", "", *job, "",
        "### Training settings", "",
        f"Every field of TRL's `DPOConfig` ({len(trainer_rows)} fields) is settable as `DPO_<FIELD>`, typed and "
        "checked from the dataclass itself; lists take JSON (`[\"sigmoid\",\"sft\"]`) or `a,b`, dicts take JSON. "
        "The ones this job gives its own default:", "",
        *table([r for r in trainer_rows if _is_job_default(r[0])]), "",
        "<details><summary>All DPOConfig fields</summary>", "", *table(trainer_rows), "", "</details>",
    ]) + "\n"


def _is_job_default(var: str) -> bool:
    return var.removeprefix("DPO_").lower() in TRAINING_DEFAULTS


def _presets() -> list[tuple[str, str]]:
    return [(name, presets.summary(name)) for name in presets.names()]


def presets_markdown() -> str:
    """The recipes in entrypoint/presets/: the first line of each file's header, and what it sets."""
    lines = ["| `DPO_PRESET` | what it is for | settings |", "|---|---|---|"]
    for name, summary in _presets():
        values = ", ".join(f"`{env_name(key)}={value if isinstance(value, str) else json.dumps(value)}`"
                           for key, value in presets.read(name, Settings.model_fields).items())
        lines.append(f"| `{name}` | {summary} | {values} |")
    return "\n".join(lines) + "\n"
