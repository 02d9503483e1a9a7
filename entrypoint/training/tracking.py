"""Experiment tracking with wandb through the Trainer's own callback.

The run id is derived from the run name, and resuming is allowed, so a preempted job that
restarts logs into the same wandb run. wandb reads its usual variables (WANDB_API_KEY, WANDB_PROJECT,
WANDB_MODE=offline, ...); what it logs as config is the trainer's `to_dict()`, where every
`*_token` value is masked, plus the job's own settings with secrets redacted (`SettingsToWandb`, callbacks.py).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any


def wandb_run_id(run_name: str) -> str:
    """Stable across restarts of the same run; wandb ids allow letters, digits, - and _."""
    return f"{run_name[:40]}-{hashlib.sha256(run_name.encode()).hexdigest()[:8]}"


def setup_wandb(run_name: str) -> None:
    """Point the Trainer's WandbCallback at this run's id (unless the user chose one)."""
    os.environ.setdefault("WANDB_RUN_ID", wandb_run_id(run_name))
    os.environ.setdefault("WANDB_RESUME", "allow")
    os.environ.setdefault("WANDB_NAME", run_name)


def log_evaluation(rows: list[dict[str, Any]], samples: list[dict[str, Any]], run_dir: Any) -> None:
    """Base vs tuned into the run's summary (`eval/<metric>/base|tuned`), and the sample generations as a
    table with their images, into the wandb run the Trainer's callback opened (still open after training)."""
    import wandb

    if wandb.run is None:
        return
    wandb.run.summary.update({f"eval/{row['metric']}/{model}": row[model] for row in rows
                              for model in ("base", "tuned") if row[model] is not None})
    columns = ["image", "prompt", "chosen", "rejected", "base", "tuned"]
    table = wandb.Table(columns=columns, data=[
        [wandb.Image(str(run_dir / s["image"])) if s.get("image") else None, *(s[c] for c in columns[1:])]
        for s in samples])
    wandb.run.log({"eval/samples": table})


def round_point(summary: dict[str, Any]) -> dict[str, Any]:
    """One on-policy round's point (onpolicy/rounds.py's summary), on its own `round` axis; a figure the round has
    not got (no held-out prompts) is left out."""
    point = {"round/mean_score": summary.get("mean_score"), "round/pairs": summary.get("pairs"),
             "round/heldout_mean_score": summary.get("heldout_mean_score")}
    return {**{key: value for key, value in point.items() if value is not None}, "round": summary["round"]}


def log_round(summary: dict[str, Any]) -> None:
    """The round's point into the wandb run the Trainer's callback opened (nothing when none is open)."""
    import wandb

    if wandb.run is None:
        return
    wandb.run.define_metric("round")
    wandb.run.define_metric("round/*", step_metric="round")  # plotted against the round, not the global step
    wandb.run.log(round_point(summary))
