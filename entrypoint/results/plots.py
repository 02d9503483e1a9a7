"""Training curves as PNGs: loss, reward accuracy, reward margin, chosen vs rejected rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = {  # file name -> (title, metrics drawn, as logged by TRL)
    "loss": ("Loss", ("loss",)),
    "reward_accuracy": ("Reward accuracy", ("rewards/accuracies",)),
    "reward_margin": ("Reward margin (chosen - rejected)", ("rewards/margins",)),
    "rewards": ("Rewards: chosen vs rejected", ("rewards/chosen", "rewards/rejected")),
}


def _series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]


def write_plots(history: list[dict[str, Any]], plots_dir: Path) -> list[Path]:
    """One PNG per plot with data, train and eval points; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, keys) in PLOTS.items():
        lines = [(f"{prefix}{key}", _series(history, f"{prefix}{key}")) for key in keys for prefix in ("", "eval_")]
        lines = [(label, points) for label, points in lines if points]
        if not lines:
            continue
        figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
        for label, points in lines:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=label)
        axes.set(title=title, xlabel="step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = plots_dir / f"{name}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written
