"""How a setting is named and shown outside the code: `DPO_<FIELD>` in the environment, a secret as REDACTED.

Below settings.py, so that presets.py (which settings.py reads through its PresetSource) names settings the same
way without importing the declaration.
"""

from __future__ import annotations

from typing import Any

ENV_PREFIX = "DPO_"
REDACTED = "***"


def env_name(field: str) -> str:
    """`learning_rate` -> `DPO_LEARNING_RATE`."""
    return ENV_PREFIX + field.upper()


def is_secret_field(field: Any) -> bool:
    """Whether a declared field (pydantic's FieldInfo) holds a credential: never logged, saved or put in a file."""
    return bool((field.json_schema_extra or {}).get("secret"))


def is_trainer_field_info(field: Any) -> bool:
    """Whether a declared field is one of TRL's DPOConfig fields, passed through to the trainer."""
    return bool((field.json_schema_extra or {}).get("trainer"))
