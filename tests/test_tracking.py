"""Tracking and logs: stable wandb ids, plots, JSON log lines, masked secrets."""

from __future__ import annotations

import json
import logging

from PIL import Image

from entrypoint.logs import MASK, setup_logging
from entrypoint.plots import write_plots
from entrypoint.tracking import wandb_run_id


def test_wandb_run_id_is_stable_per_run_name_and_valid():
    first = wandb_run_id("tiny-llava-next-sample-rlaif-v")
    assert first == wandb_run_id("tiny-llava-next-sample-rlaif-v") != wandb_run_id("other")
    assert all(c.isalnum() or c in "-_." for c in first)


def test_plots_are_real_pngs_of_the_logged_curves(tmp_path):
    history = [{"step": s, "loss": 0.7 - s / 100, "rewards/accuracies": s / 10, "rewards/margins": s / 50,
                "rewards/chosen": s / 40, "rewards/rejected": -s / 40} for s in range(1, 8)]
    history.append({"step": 7, "eval_loss": 0.6, "eval_rewards/accuracies": 0.7})
    paths = write_plots(history, tmp_path / "plots")
    assert [p.name for p in paths] == ["loss.png", "reward_accuracy.png", "reward_margin.png", "rewards.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (600, 350)
    assert write_plots([], tmp_path / "none") == []


def test_json_logs_one_object_per_line_with_secrets_masked(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "canary-wandb-key")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    setup_logging("json", ["canary-hub-token"])
    logging.getLogger("x").info("key %s and %s", "canary-wandb-key", "canary-hub-token")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == f"key {MASK} and {MASK}" and entry["level"] == "INFO" and entry["logger"] == "x"
