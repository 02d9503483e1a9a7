"""Where each setting came from: the job's default, DPO_PRESET's recipe, or the environment.

`--dry-run` prints the table, config.json records the sources (`"sources"`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from entrypoint.config import presets
from entrypoint.config.names import REDACTED, env_name
from entrypoint.config.settings import JobSettings, public_dict


def origins(settings: JobSettings, environ: dict[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """Every setting config.json records (`public_dict`: secrets redacted): its value and where it came
    from, `default`, `preset <name>` or `env` (or `argument`, for settings built in code)."""
    environ = {k.upper() for k in (os.environ if environ is None else environ)}
    preset = presets.read(settings.preset.strip(), type(settings).model_fields) if settings.preset else {}
    out: dict[str, tuple[Any, str]] = {}
    for name, value in public_dict(settings).items():
        if name not in settings.model_fields_set:
            source = "default"
        elif env_name(name) in environ:
            source = "env"
        elif name in preset:
            source = f"preset {settings.preset.strip()}"
        else:
            source = "argument"
        out[name] = (value, source)
    return out


def sources(settings: JobSettings) -> dict[str, str]:
    """Where each setting came from, for config.json."""
    return {name: source for name, (_, source) in origins(settings).items()}


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if value == "":
        return '""'
    return value if isinstance(value, str) else json.dumps(value)


def table(settings: JobSettings) -> str:
    """The resolved settings, one aligned line each: variable, source, value (`--dry-run` prints it)."""
    rows = [(env_name(name), source, _shown(value)) for name, (value, source) in origins(settings).items()]
    width = max(len(r[0]) for r in rows)
    source_width = max(len(r[1]) for r in rows)
    lines = [f"settings ({len(rows)}; source: default, preset <name> or env; secrets {REDACTED}):"]
    lines += [f"  {var:<{width}}  {source:<{source_width}}  {value}" for var, source, value in rows]
    return "\n".join(lines)
