"""Training curves: one real PNG per curve TRL logged, train and eval points, none for missing data."""

from __future__ import annotations

import numpy as np
from PIL import Image

from entrypoint.results.plots import write_plots

HISTORY = [{"step": s, "loss": 0.7 - s / 100, "rewards/accuracies": s / 10, "rewards/margins": s / 50,
            "rewards/chosen": s / 40, "rewards/rejected": -s / 40, "learning_rate": 1e-5} for s in range(1, 8)]


def test_one_png_per_curve_as_logged_by_trl(tmp_path):
    history = [*HISTORY, {"step": 7, "eval_loss": 0.6, "eval_rewards/accuracies": 0.7},
               {"step": 7, "train_loss": 0.65, "train_runtime": 3.0}]  # the trainer's closing summary: not a curve
    paths = write_plots(history, tmp_path / "plots")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "plots/loss.png", "plots/reward_accuracy.png", "plots/reward_margin.png", "plots/rewards.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (600, 350)
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn


def test_eval_only_history_still_plots_and_empty_history_plots_nothing(tmp_path):
    evals = [{"step": s, "eval_loss": 0.69 - s / 100, "eval_rewards/margins": s / 10} for s in (0, 5, 10)]
    assert [p.name for p in write_plots(evals, tmp_path / "eval")] == ["loss.png", "reward_margin.png"]
    assert write_plots([], tmp_path / "none") == []
