"""The model card tells a user of each family what their own code must do to see images as training did."""

from __future__ import annotations

import pytest

from entrypoint.config.settings import load_settings
from entrypoint.models.families import FAMILIES
from entrypoint.models.loading import ModelRef
from entrypoint.results.card import render

METRICS = {"train": {"global_step": 3}, "eval_before": {"loss": 0.69}, "eval_after": {"loss": 0.6}}
REPORT = {"train_pairs": 9, "eval_pairs": 1, "format": "rlaif-v"}


def card(monkeypatch, family: str, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(f"DPO_{key.upper()}", value)
    settings = load_settings()
    return render(settings, ModelRef(settings.model, FAMILIES[family]), REPORT, METRICS)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_cards_name_the_pixel_cap_and_torchvision(monkeypatch, family):
    assert "pixels" not in card(monkeypatch, "llava-next").split("## How to load")[1]
    text = card(monkeypatch, family, image_max_pixels="802816")
    assert "at most 802,816 pixels" in text and "needs `torchvision`" in text


def test_a_gemma3_card_trained_with_pan_and_scan_says_how_to_call_the_processor(monkeypatch):
    assert "do_pan_and_scan" not in card(monkeypatch, "gemma3")
    assert "do_pan_and_scan=True, pan_and_scan_max_num_crops=3" in card(monkeypatch, "gemma3", max_image_tiles="3")


def test_the_card_shows_pope_figures_by_category_and_what_they_were_measured_on(monkeypatch):
    from entrypoint.evaluation.comparison import comparison
    from entrypoint.evaluation.yes_no import yes_no_report

    yes_no = yes_no_report(["yes", "no", "yes", "no"], ["adversarial", "adversarial", "random", "random"],
                           {"base": [1.0, 1.0, 1.0, 1.0], "tuned": [1.0, -1.0, 1.0, -1.0]})
    report = {**REPORT, "eval_pairs": 4, "eval_set": {"source": "lmms-lab/POPE", "format": "pope", "rows_read": 9000,
                                                      "rows_used": 4, "pairs": 4, "dropped": {}}}
    settings = load_settings()
    text = render(settings, ModelRef(settings.model, FAMILIES["llava-next"]), report,
                  {**METRICS, "yes_no": yes_no, "comparison": comparison({}, {}, {}, yes_no)})
    # base answers yes to all: accuracy 0.5, precision 0.5, recall 1, F1 2/3, yes share 1; tuned: all right
    assert ("| all | 4 | 0.5000 -> 1.0000 | 0.5000 -> 1.0000 | 1.0000 -> 1.0000 | 0.6667 -> 1.0000 | "
            "1.0000 -> 0.5000 |") in text
    assert "| adversarial | 2 | 0.5000 -> 1.0000 |" in text and "| random | 2 | 0.5000 -> 1.0000 |" in text
    assert "On the eval set `lmms-lab/POPE` (4 pairs, format `pope`); the training data was not split" in text
    assert "Eval set `lmms-lab/POPE` (format `pope`): 4 of 9000 rows used, 4 pairs." in text
    assert text.count("yes and no tokens after the prompt, against the reference") == 1  # one note for five rows
