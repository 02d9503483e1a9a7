"""report.html: one self-contained page to look at after a run (no network: images are data: URIs)."""

from __future__ import annotations

import base64
import json
import mimetypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from entrypoint.evaluation.comparison import MISSING, number


def _number(value: Any, sign: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | None):
        return str(value)
    return f"{value:+.4f}" if sign and value is not None else number(value)  # as the card and the log show them


def _value(value: Any) -> str:
    """A setting or report value as text: None as a dash, lists and dicts as compact JSON."""
    if value is None:
        return MISSING
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _data_uri(path: Path) -> str | None:
    """The file as a data: URI, or None when it cannot be read (the report still renders)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    except OSError:
        return None


def _comparison_row(row: dict[str, Any]) -> dict[str, Any]:
    base, tuned = row.get("base"), row.get("tuned")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (base, tuned))
    return {"metric": row.get("metric", ""), "base": _number(base), "tuned": _number(tuned),
            "delta": _number(tuned - base, sign=True) if numbers else MISSING,
            "count": MISSING if row.get("count") is None else row["count"], "note": row.get("note") or ""}


def _sample_row(sample: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    image = sample.get("image")
    return {**{key: sample.get(key) or "" for key in ("prompt", "chosen", "rejected", "base", "tuned")},
            "image": str(image) if image else None, "image_uri": _data_uri(run_dir / image) if image else None}


def write_report(path: Path, *, run_name: str, settings: dict, data_report: dict, metrics: dict,
                 plots: list[Path], run_dir: Path) -> Path:
    """Render report.html to `path`: header, base vs tuned, training curves, samples, data, settings."""
    # Autoescape on: prompts and answers are user data. select_autoescape() alone would leave it off for a
    # name ending in .j2, so the template's double suffix is named here.
    escape = select_autoescape(("html", "html.j2"))
    env = Environment(loader=PackageLoader("entrypoint.results", "templates"), autoescape=escape)
    train = metrics.get("train") or {}
    dropped = data_report.get("dropped") or {}
    html = env.get_template("report.html.j2").render(
        run_name=run_name, model=settings.get("model", MISSING), dataset=settings.get("dataset", MISSING),
        steps=train.get("global_step", settings.get("max_steps", MISSING)),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        comparison=[_comparison_row(row) for row in metrics.get("comparison") or []],
        plots=[{"name": p.stem.replace("_", " "), "uri": _data_uri(p)} for p in plots],
        samples=[_sample_row(sample, run_dir) for sample in metrics.get("samples") or []],
        data={key: _value(data_report.get(key)) for key in
              ("source", "format", "rows_read", "rows_used", "pairs", "train_pairs", "eval_pairs")},
        dropped=sorted(dropped.items(), key=lambda item: -item[1]),
        tokens={key: _value(value) for key, value in (data_report.get("tokens") or {}).items()},
        settings={key: _value(value) for key, value in settings.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
