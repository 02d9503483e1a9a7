"""report.html: one self-contained page to look at after a run (no network: images are data: URIs).

Every section is a table a person reads (numbers formatted, no JSON): base vs tuned, the yes/no questions by
category, the training curves, sample answers with their images, the data (split or eval set, drops, tokens) and
the settings."""

from __future__ import annotations

import base64
import json
import mimetypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from entrypoint.evaluation.comparison import MISSING, YES_NO_ROWS, number


def _number(value: Any, sign: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | None):
        return str(value)
    return f"{value:+.4f}" if sign and value is not None else number(value)  # as the card and the log show them


def _value(value: Any) -> str:
    """A setting or report value as text: None as a dash, lists comma-separated, a mapping as `key: value` pairs,
    whole numbers with thousands separators."""
    if value is None:
        return MISSING
    if isinstance(value, list | tuple):
        return ", ".join(_value(item) for item in value) if value else MISSING
    if isinstance(value, dict):
        return "; ".join(f"{key}: {json.dumps(item, default=str) if isinstance(item, dict) else _value(item)}"
                         for key, item in value.items()) if value else MISSING
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
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


TOKEN_ROWS = {"pair_tokens": "a pair (prompt + the longer answer)", "prompt_tokens": "a prompt (with its image tokens)",
              "answer_tokens": "the longer answer", "image_tokens_per_image": "an image"}


def _tokens(tokens: dict[str, Any]) -> dict[str, Any]:
    """The token report as a table of spreads (p50, p95, max a pair, a prompt, ...) and a few facts beside it."""
    if not tokens:
        return {}
    rows = [{"what": label, **{key: _value(tokens[name].get(key)) for key in ("p50", "p95", "max")},
             "count": _value(tokens[name].get("images", tokens.get("pairs_measured")))}
            for name, label in TOKEN_ROWS.items() if tokens.get(name)]
    facts = [("DPO_MAX_LENGTH", tokens.get("max_length")), ("pairs measured", tokens.get("pairs_measured")),
             ("pairs dropped: the prompt reaches DPO_MAX_LENGTH", tokens.get("dropped_prompt_too_long")),
             ("pairs with an answer cut by DPO_MAX_LENGTH", tokens.get("answers_cut")),
             ("DPO_MAX_LENGTH that keeps the p95 pair whole", tokens.get("length_for_p95")),
             ("DPO_MAX_LENGTH that keeps every pair whole", tokens.get("length_for_all"))]
    return {"rows": rows, "facts": [(label, _value(value)) for label, value in facts if value is not None]}


YES_NO_HEADERS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1",
                  "yes_ratio": "yes share"}


def _yes_no(yes_no: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's "yes_no" as a table: overall, then each category; each figure base and tuned."""
    if not yes_no:
        return {}

    def row(name: str, part: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "questions": _value(part["questions"]),
                "cells": [(_number(part["base"][key]), _number(part["tuned"][key])) for key in YES_NO_ROWS]}

    tokens = yes_no.get("tokens") or {}
    return {"figures": [YES_NO_HEADERS[key] for key in YES_NO_ROWS],
            "rows": [row("all", yes_no), *(row(name, part) for name, part in yes_no["categories"].items())],
            "scoring": yes_no.get("scoring", ""),
            "tokens": "; ".join(f"{word}: {', '.join(repr(t) for t in shown)}" for word, shown in tokens.items())}


def _split(split: dict[str, Any]) -> list[dict[str, str]]:
    """The grouped split, one row a side, then what both sides hold (0 by construction, counted from the pairs)."""
    if not split:
        return []
    rows = [{"side": side, **{key: _value(split[side][key]) for key in ("pairs", "groups", "images", "prompts")}}
            for side in ("train", "eval")]
    return [*rows, {"side": "on both sides", "pairs": MISSING, "groups": MISSING,
                    "images": _value(split["shared"]["images"]), "prompts": _value(split["shared"]["prompts"])}]


def _data(report: dict[str, Any]) -> dict[str, Any]:
    """One data report (the training data's, or the eval set's) as rows of a table."""
    rows = [("source", _value(report.get("source"))),
            ("format", f"{_value(report.get('format'))}" + (" (detected)" if report.get("format_detected") else "")),
            ("rows read / used", f"{_value(report.get('rows_read'))} / {_value(report.get('rows_used'))}"),
            ("rows not sampled (DPO_MAX_SAMPLES, DPO_MAX_EVAL_PAIRS)", _value(report.get("not_sampled"))),
            ("pairs", _value(report.get("pairs")))]
    if "train_pairs" in report:
        rows.append(("pairs trained on / evaluated on", f"{_value(report.get('train_pairs'))} / "
                                                        f"{_value(report.get('eval_pairs'))}"))
    dropped = report.get("dropped") or {}
    return {"rows": rows, "dropped": sorted(dropped.items(), key=lambda item: -item[1]),
            "examples": report.get("dropped_examples") or {}, "tokens": _tokens(report.get("tokens") or {})}


def _evaluated_on(settings: dict[str, Any], data_report: dict[str, Any]) -> str:
    """What base vs tuned was measured on, in a sentence."""
    eval_set = data_report.get("eval_set")
    if eval_set:
        return (f"DPO_EVAL_DATASET {eval_set.get('source')}: {_value(data_report.get('eval_pairs'))} pairs "
                f"({eval_set.get('format')}); the training data was not split, and its pairs that share an image or "
                "a prompt with the eval set were left out of training.")
    split = data_report.get("split")
    if split:
        return (f"the eval split of {data_report.get('source')}: {_value(split['eval']['pairs'])} pairs in "
                f"{_value(split['eval']['groups'])} groups, held out by image and prompt: "
                f"{_value(split['shared']['images'])} images and {_value(split['shared']['prompts'])} prompts are "
                "also in training.")
    if data_report.get("eval_pairs"):
        return f"{_value(data_report['eval_pairs'])} held-out pairs of {data_report.get('source')}."
    return ""


def _comparison_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows, each note shown once: under the first of the rows it explains in a run."""
    shown, out = set(), []
    for row in map(_comparison_row, rows):
        out.append({**row, "note": "" if row["note"] in shown else row["note"]})
        shown.add(row["note"])
    return out


def _sample_row(sample: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    image = sample.get("image")
    return {**{key: sample.get(key) or "" for key in ("prompt", "chosen", "rejected", "base", "tuned")},
            "image": str(image) if image else None, "image_uri": _data_uri(run_dir / image) if image else None}


def _claim(claim: dict[str, Any]) -> dict[str, Any]:
    return {"claim": claim.get("claim", ""), "question": claim.get("question", ""),
            "p_yes": _number(claim.get("p_yes")), "true": "true" if claim.get("true") else "false"}


def _rounds(rounds: list[dict[str, Any]], examples: dict[int, list[dict[str, Any]]], run_dir: Path,
            ) -> dict[str, Any]:
    """metrics.json's "rounds" as a table, a round a row, and each round's example pairs (results/rounds.py)."""
    if not rounds:
        return {}
    rows = [{"round": r["round"], **{key: _value(r.get(key)) for key in ("prompts", "samples", "pairs")},
             "mean_score": _number(r.get("mean_score")), "heldout": _number(r.get("heldout_mean_score")),
             "step": _value(r.get("global_step"))} for r in rounds]
    shown = []
    for round_, pairs in sorted(examples.items()):
        shown.append({"round": round_, "pairs": [
            {**{key: pair.get(key) or "" for key in ("prompt", "chosen", "rejected")},
             "chosen_score": _number(pair.get("chosen_score")), "rejected_score": _number(pair.get("rejected_score")),
             "image": pair.get("image"), "image_uri": _data_uri(run_dir / pair["image"]) if pair.get("image") else None,
             "chosen_claims": [_claim(c) for c in pair.get("chosen_claims") or []],
             "rejected_claims": [_claim(c) for c in pair.get("rejected_claims") or []]} for pair in pairs]})
    return {"rows": rows, "heldout_base": _number(rounds[0].get("heldout_base")), "examples": shown}


def write_report(path: Path, *, run_name: str, settings: dict, data_report: dict, metrics: dict,
                 plots: list[Path], run_dir: Path, round_examples: dict[int, list[dict]] | None = None) -> Path:
    """Render report.html to `path`: header, base vs tuned, yes/no questions, the on-policy rounds (with
    `round_examples`, results/rounds.py), training curves, samples, data, settings."""
    # Autoescape on: prompts and answers are user data. select_autoescape() alone would leave it off for a
    # name ending in .j2, so the template's double suffix is named here.
    escape = select_autoescape(("html", "html.j2"))
    env = Environment(loader=PackageLoader("entrypoint.results", "templates"), autoescape=escape)
    train = metrics.get("train") or {}
    html = env.get_template("report.html.j2").render(
        run_name=run_name, model=settings.get("model", MISSING), dataset=settings.get("dataset", MISSING),
        eval_dataset=settings.get("eval_dataset"), steps=train.get("global_step", settings.get("max_steps", MISSING)),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        evaluated_on=_evaluated_on(settings, data_report),
        comparison=_comparison_rows(metrics.get("comparison") or []),
        yes_no=_yes_no(metrics.get("yes_no") or {}),
        rounds=_rounds(metrics.get("rounds") or [], round_examples or {}, run_dir),
        plots=[{"name": p.stem.replace("_", " "), "uri": _data_uri(p)} for p in plots],
        samples=[_sample_row(sample, run_dir) for sample in metrics.get("samples") or []],
        data=_data(data_report), split=_split(data_report.get("split") or {}),
        eval_set=_data(data_report["eval_set"]) if data_report.get("eval_set") else None,
        settings={key: _value(value) for key, value in settings.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
