"""DPO_EVAL_DATASET, as the container runs it: base vs tuned measured on a separate set (POPE's schema), its bad rows
counted like the training data's, and an eval set that cannot be used stopped before any model is loaded."""

from __future__ import annotations

import io
import json

import datasets
import pytest
from PIL import Image

from conftest import completed_run, job_env, run_job

RUN = dict(model="tiny:llava-next", dataset="sample:rlaif-v", eval_dataset="sample:pope", max_steps="4",
           per_device_train_batch_size="4", gradient_accumulation_steps="1", learning_rate="5e-3", eval_generations="1")
S = datasets.Value("string")
POPE = datasets.Features({"id": S, "question_id": S, "question": S, "answer": S, "image_source": S,
                          "image": datasets.Image(), "category": S})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    output, result = completed_run(tmp_path_factory, cache_dir, "eval-set", **RUN)
    return output, result, {name: json.loads((output / f"{name}.json").read_text())
                            for name in ("metrics", "data_report")}


def test_the_training_data_is_not_split_and_the_eval_set_has_its_own_report(finished):
    _, result, files = finished
    report = files["data_report"]
    assert report["train_pairs"] == report["pairs"] == 48 and "split" not in report  # every pair trained on
    assert report["eval_pairs"] == 48 and report["eval_set"]["source"] == "sample:pope"
    assert report["eval_set"]["format"] == "pope" and report["eval_set"]["dropped"] == {}
    assert "data: eval set sample:pope (pope 48 of 48 rows) -> 48 pairs" in result.stderr


def test_base_vs_tuned_is_pope_figures_by_category(finished):
    output, result, files = finished
    metrics = files["metrics"]
    yes_no = metrics["yes_no"]
    assert yes_no["questions"] == 48 and set(yes_no["categories"]) == {"adversarial", "popular", "random"}
    assert sum(part["questions"] for part in yes_no["categories"].values()) == 48
    for name in ("base", "tuned"):
        figures = yes_no[name]
        assert figures["tp"] + figures["fn"] == 24  # POPE asks as many yes as no questions
        assert figures["tp"] + figures["fp"] + figures["tn"] + figures["fn"] == 48
        assert figures["yes_ratio"] == (figures["tp"] + figures["fp"]) / 48
        assert metrics["evaluation"]["task"]["closed"][name] == figures["accuracy"]
    rows = {row["metric"]: row for row in metrics["comparison"]}
    assert rows["yes/no F1"]["tuned"] == yes_no["tuned"]["f1"] and rows["yes/no accuracy"]["count"] == 48
    assert metrics["evaluation"]["preference"]["base"]["pairs"] == 48  # likelihoods of the yes/no pairs, as before
    assert "evaluation: yes/no questions: 48/48 questions in" in result.stderr  # progress, with its rate
    assert "evaluation: yes/no questions (48), base -> tuned: accuracy" in result.stderr
    card = (output / "adapter" / "README.md").read_text()
    assert "### Yes/no questions" in card and "| adversarial | 18 |" in card and "the eval set `sample:pope`" in card
    html = (output / "report.html").read_text()
    assert 'id="yes-no"' in html and html.count('<tr class="category') == 4 and 'id="eval-set"' in html


def _pope_file(path, rows):
    picture = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(picture, "PNG")
    image = {"bytes": picture.getvalue(), "path": None}
    records = [{"id": str(i), "question_id": str(i + 1), "question": "Is there a square in the image?",
                "answer": "yes", "image_source": "x", "image": image, "category": "random", **row}
               for i, row in enumerate(rows)]
    datasets.Dataset.from_list(records, features=POPE).to_parquet(path)
    return path


def test_bad_eval_rows_are_counted_by_reason_like_training_rows(tmp_path, cache_dir):
    bad = [{"image": None}, {"answer": "maybe"}, {"question": " "}]
    path = _pope_file(tmp_path / "pope.parquet", [{}] * 5 + bad)
    result = run_job(job_env(cache_dir, tmp_path / "out", **{**RUN, "eval_dataset": str(path)},
                             max_bad_fraction="0.5"), "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if "data: eval set: dropped 3 rows: " in line)
    assert all(f"{reason} 1" in line for reason in ("missing image", "answer is not yes or no", "empty question"))
    assert "(pope 8 of 8 rows) -> 5 pairs" in result.stderr


@pytest.mark.parametrize(("rows", "settings", "message"), [
    ([{"image": None}] * 3, {}, "error: DPO_EVAL_DATASET={path}: every one of the 3 rows is bad: missing image: 3"),
    ([{}] * 2, {"eval_dataset_split": "test"}, "error: DPO_EVAL_DATASET_SPLIT=test: {path} has the split(s) train"),
    ([{}] * 2, {"eval_dataset_format": "rlaif-v"}, "error: DPO_EVAL_DATASET: the dataset has no column(s) chosen"),
])
def test_an_eval_set_that_cannot_be_used_exits_2_before_any_model_is_loaded(tmp_path, cache_dir, rows, settings,
                                                                            message):
    path = _pope_file(tmp_path / "pope.parquet", rows)
    result = run_job(job_env(cache_dir, tmp_path / "out", **{**RUN, "eval_dataset": str(path), **settings}))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message.format(path=path) in result.stderr
    assert "model: loading" not in result.stderr


def test_an_unknown_eval_sample_is_refused_at_start_up(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", **{**RUN, "eval_dataset": "sample:popex"}))
    assert result.returncode == 2 and "error: DPO_EVAL_DATASET='sample:popex': unknown sample; samples: " in \
        result.stderr
