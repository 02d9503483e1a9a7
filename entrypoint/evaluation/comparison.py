"""The before/after table: each figure for the base model and the tuned adapter, and how the log, the card and
report.html show a figure."""

from __future__ import annotations

from typing import Any

MISSING = "—"  # where a figure has no value (the card, the log, report.html)
STEP0_NOTE = "base: at step 0 the policy is the reference, so rewards are 0 and the loss ln 2 by construction"
YES_NO_NOTE = ("the more probable of the model's yes and no tokens after the prompt, against the reference "
               "(yes positive)")
# POPE's figures (yes_no.py), as the table names them
YES_NO_ROWS = {"accuracy": "yes/no accuracy", "precision": "yes/no precision", "recall": "yes/no recall",
               "f1": "yes/no F1", "yes_ratio": "yes/no: share answered yes"}


def comparison(evaluation: dict[str, Any], before: dict[str, float], after: dict[str, float],
               yes_no: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The before/after table (metrics.json "comparison"; card, report, wandb and the log's summary show it);
    `yes_no`: metrics.json's "yes_no" (its rows stand for task accuracy's yes/no questions)."""
    rows: list[dict[str, Any]] = []
    preference = evaluation.get("preference") or {}
    if preference:
        base, tuned = preference["base"], preference["tuned"]
        rows += [
            _row("preference accuracy (likelihood)", base["accuracy"], tuned["accuracy"], base["pairs"],
                 "share of pairs whose chosen answer has the higher mean log-probability a token"),
            _row("likelihood gap, chosen - rejected", base["mean_gap"], tuned["mean_gap"], base["pairs"],
                 "mean log-probability a token (nats)"),
        ]
    task = evaluation.get("task") or {}
    if yes_no:
        base, tuned = yes_no["base"], yes_no["tuned"]
        rows += [_row(label, base[key], tuned[key], yes_no["questions"], YES_NO_NOTE)
                 for key, label in YES_NO_ROWS.items()]
    elif "closed" in task:
        rows.append(_row("yes/no questions: exact match", task["closed"]["base"], task["closed"]["tuned"],
                         task["closed"]["questions"], "the greedy answer's yes or no against the reference"))
    if "open" in task:
        rows.append(_row("open questions: token F1", task["open"]["base"], task["open"]["tuned"],
                         task["open"]["questions"], "greedy answer against the reference answer"))
    for key, label in (("rewards/accuracies", "DPO reward accuracy"), ("rewards/margins", "DPO reward margin"),
                       ("loss", "DPO loss")):
        if key in after:
            rows.append(_row(label, before.get(key), after[key], evaluation.get("pairs"), STEP0_NOTE))
    return rows


def _row(metric: str, base: float | None, tuned: float | None, count: int | None, note: str) -> dict[str, Any]:
    return {"metric": metric, "base": base, "tuned": tuned, "count": count, "note": note}


def number(value: float | None) -> str:
    """A figure of the comparison as the log and the card show it (a dash where there is none)."""
    return MISSING if value is None else f"{value:.4f}"


def yes_no_lines(yes_no: dict[str, Any]) -> list[str]:
    """The yes/no figures, overall and by category, as log lines."""
    def figures(part: dict[str, Any]) -> str:
        return ", ".join(f"{key.replace('_', ' ')} {number(part['base'][key])} -> {number(part['tuned'][key])}"
                         for key in YES_NO_ROWS)

    return [f"yes/no questions ({yes_no['questions']}), base -> tuned: {figures(yes_no)}",
            *(f"  {name} ({part['questions']}): {figures(part)}" for name, part in yes_no["categories"].items())]


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table as text lines for the log."""
    return [f"  {row['metric']}: base {number(row['base'])} -> tuned {number(row['tuned'])}"
            + (f" ({row['count']})" if row["count"] else "") for row in rows if not row["metric"].startswith("DPO")]
