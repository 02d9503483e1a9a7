"""The fields of TRL's `DPOConfig`, read from the installed sources without importing them.

Every `DPOConfig` field is settable as `DPO_<FIELD>`, typed from the dataclass itself. Importing
`trl` pulls in torch and bitsandbytes (about 5 s), and bad configuration must fail in well under
a second, so the class bodies are parsed with `ast` instead. A test checks that the names found
here are exactly `dataclasses.fields(DPOConfig)`, so this cannot drift from the real class.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# The class chain, most basic first; later classes override earlier fields.
_CLASS_CHAIN = (
    ("transformers", "training_args.py", "TrainingArguments"),
    ("trl", "trainer/base_config.py", "_BaseConfig"),
    ("trl", "trainer/dpo_config.py", "DPOConfig"),
)
# Enum types in annotations accept their string values; `DPOConfig` converts them itself.
_STRING_ENUMS = ("IntervalStrategy", "SaveStrategy", "HubStrategy", "SchedulerType", "OptimizerNames",
                 "DebugOption")


@dataclass(frozen=True)
class TrainerField:
    name: str
    annotation: Any  # a typing expression pydantic can validate; None when not settable by env
    default_text: str  # the default as written in the source, for --help
    default: Any  # its value where it is a literal, else None
    help: str


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations)))


def _class_body(package: str, relpath: str, name: str) -> list[ast.stmt]:
    tree = ast.parse((_package_dir(package) / relpath).read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.body
    raise LookupError(f"{name} not found in {package}/{relpath}")


def _annotation(source: str) -> Any:
    """Evaluate an annotation string; unknown class types (not settable from text) give None."""
    namespace = {"Any": Any, "Literal": Literal, "None": None, "typing": typing,
                 **{enum: str for enum in _STRING_ENUMS}}
    try:
        return eval(source, {"__builtins__": {"dict": dict, "list": list, "str": str, "int": int,
                                              "float": float, "bool": bool}}, namespace)
    except (NameError, TypeError):
        return None


def _keyword(call: ast.expr, key: str) -> ast.expr | None:
    if isinstance(call, ast.Call):
        for kw in call.keywords:
            if kw.arg == key:
                return kw.value
    return None


def _field(stmt: ast.AnnAssign) -> TrainerField:
    value = stmt.value
    default = _keyword(value, "default")
    factory = _keyword(value, "default_factory")
    if default is not None:
        default_text = ast.unparse(default)
    elif isinstance(factory, ast.Lambda):
        default_text = ast.unparse(factory.body)
    elif value is not None and not isinstance(value, ast.Call):
        default_text = ast.unparse(value)
    else:
        default_text = "None"
    help_text = ""
    metadata = _keyword(value, "metadata")
    if isinstance(metadata, ast.Dict):
        for key, val in zip(metadata.keys, metadata.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "help" and isinstance(val, ast.Constant):
                help_text = str(val.value)
    try:
        default_value = ast.literal_eval(default_text)
    except (ValueError, SyntaxError):
        default_value = None
    return TrainerField(stmt.target.id, _annotation(ast.unparse(stmt.annotation)), default_text, default_value,
                        " ".join(help_text.replace("%%", "%").split()))


@functools.cache
def dpo_config_fields() -> dict[str, TrainerField]:
    """Every `DPOConfig` field by name, in declaration order, subclass overrides applied."""
    fields: dict[str, TrainerField] = {}
    for package, relpath, name in _CLASS_CHAIN:
        for stmt in _class_body(package, relpath, name):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if not stmt.target.id.startswith("_"):
                    fields[stmt.target.id] = _field(stmt)
    return fields
