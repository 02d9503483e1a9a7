"""Scenario recipes: `DPO_PRESET=<name>` applies `entrypoint/presets/<name>.yaml`.

A preset is a small YAML mapping of settings, named as in settings.py (`DPO_` dropped, lower case):
`model: ...`, `learning_rate: 5.0e-5`, `loss_type: [sigmoid, bco_pair, sft]`. It sits between the job's
defaults and the environment: any `DPO_*` variable overrides it. Its values are validated like the
environment's, and an error in one names the preset file and the key. Each file opens with a comment
saying what it is for and where its values come from; the first line of it is the preset's summary
(README, `--help`).

`PresetSource` is the pydantic-settings source that applies it (see `JobSettings.settings_customise_sources`).
Which settings exist comes from the declaration it is given (`fields`: the settings class's `model_fields`), so
this module sits below settings.py instead of importing it; origin.py says where each setting came from.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic_settings import PydanticBaseSettingsSource

from entrypoint.config.names import env_name, is_secret_field
from entrypoint.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"  # entrypoint/presets/: the recipes, YAML only
_PACKAGE_ROOT = PRESET_DIR.parents[1]  # the folder holding entrypoint/
SUFFIX = ".yaml"


def names() -> list[str]:
    return sorted(p.name.removesuffix(SUFFIX) for p in PRESET_DIR.glob(f"*{SUFFIX}"))


def location(name: str) -> str:
    """How errors name a preset: `preset rlaif-v (entrypoint/presets/rlaif-v.yaml)`."""
    path = PRESET_DIR / f"{name}{SUFFIX}"
    if path.is_relative_to(_PACKAGE_ROOT):
        path = path.relative_to(_PACKAGE_ROOT)
    return f"preset {name} ({path})"


def summary(name: str) -> str:
    """The first line of the file's comment header."""
    for line in (PRESET_DIR / f"{name}{SUFFIX}").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def read(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The preset's settings as written, keys checked against the declaration `fields` (values are validated
    with the rest of the settings). ConfigError: unknown preset, not YAML, unknown or secret key."""
    import yaml  # only when a preset is used

    known = names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{env_name('preset')}={name!r}: unknown preset{hint}; presets: {', '.join(known)}")
    try:
        data = yaml.safe_load((PRESET_DIR / f"{name}{SUFFIX}").read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{location(name)}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{location(name)}: must be a mapping of `setting: value` lines")
    settable = set(fields) - {"preset"}
    for key in data:
        if key not in settable:
            close = difflib.get_close_matches(str(key).lower().removeprefix("dpo_"), settable, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else " (keys are setting names without DPO_, lower case)"
            raise ConfigError(f"{location(name)}: {key}: unknown setting{hint}")
        if is_secret_field(fields[key]):
            raise ConfigError(f"{location(name)}: {key}: a secret; set {env_name(key)} in the environment, "
                              "never in a file in the repository")
    return data


class PresetSource(PydanticBaseSettingsSource):
    """The settings of the preset named by DPO_PRESET: placed after the environment, so any DPO_*
    variable overrides them, and before the defaults."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        name = self.current_state.get("preset")  # what the sources before this one (the environment) set
        name = name.strip() if isinstance(name, str) else None
        return read(name, self.settings_cls.model_fields) if name else {}


def preset_key(environ: dict[str, str], field: str, fields: dict[str, Any]) -> str | None:
    """`preset NAME (its file): FIELD` when the value of `field` came from the preset, for error messages."""
    name = environ.get(env_name("preset"), "").strip()
    if not name or env_name(field) in environ or name not in names():
        return None
    return f"{location(name)}: {field}" if field in read(name, fields) else None
