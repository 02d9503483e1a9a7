"""The data pipeline on a user's messy data: every bad row skipped and counted with its reason (or the
first one stopping the job), the bad-row limit, where every row went, multi-image rows, determinism."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import job_env, run_job
from entrypoint.data.images import SizeLimit
from entrypoint.data.prepare import DataSpec, RowRules, prepare, processes_for
from entrypoint.errors import ConfigError

S = datasets.Value("string")
RLAIF_V = datasets.Features({"image": datasets.Image(), "question": S, "chosen": S, "rejected": S, "idx": S})
LIMIT = SizeLimit(longest=64)
LENIENT = RowRules(max_bad_fraction=0.5)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def good_row(i: int) -> dict:
    color = ("red", "green", "blue")[i % 3]
    return {"image": {"bytes": encoded(Image.new("RGB", (40 + i, 30), color)), "path": None},
            "question": f"What color is picture {i}?", "chosen": f"It is {color}.", "rejected": "It is a dog.",
            "idx": f"good-{i}"}


_PHOTO = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)), "JPEG")
# One row of each kind a user's data brings, by the reason it must be counted under.
BAD_ROWS = {
    "missing question": {"question": None},
    "empty chosen": {"chosen": "   "},
    "chosen equals rejected": {"chosen": "It is a dog."},
    "missing image": {"image": None},
    "unreadable image: not an image": {"image": {"bytes": b"<html>404 Not Found</html>", "path": None}},
    "unreadable image: empty file": {"image": {"bytes": b"", "path": None}},
    "unreadable image: truncated or corrupt": {"image": {"bytes": _PHOTO[: len(_PHOTO) // 2], "path": None}},
    "unreadable image: decompression bomb (10000x10000 is over PIL's limit of 89,478,485 pixels)": {
        "image": {"bytes": encoded(Image.new("1", (10_000, 10_000))), "path": None}},
    "image too small (a side under 2 px)": {"image": {"bytes": encoded(Image.new("RGB", (1, 1))), "path": None}},
}
GOOD = 12


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """An RLAIF-V-shaped file: 12 good rows and one of each bad kind, the bad ones spread among them."""
    rows = [good_row(i) for i in range(GOOD)]
    for k, change in enumerate(BAD_ROWS.values()):
        rows.insert(1 + 2 * k, {**good_row(100 + k), **change, "idx": f"bad-{k}"})
    path = tmp_path_factory.mktemp("messy") / "messy.parquet"
    datasets.Dataset.from_list(rows, features=RLAIF_V).to_parquet(str(path))
    return path


def run(path, tmp_path, rules=LENIENT, **spec):
    """The pipeline on `path` with a quarter held out; `spec`: DataSpec fields to change."""
    spec = DataSpec(str(path), "train", **{"eval_fraction": 0.25, "max_eval_pairs": 8, **spec})
    return prepare(spec, tmp_path, replace(rules, limit=LIMIT))


def test_every_bad_row_is_skipped_counted_and_named_and_every_row_accounted_for(messy, tmp_path):
    data = run(messy, tmp_path)
    report = data.report
    assert report["dropped"] == dict.fromkeys(BAD_ROWS, 1)
    assert report["bad_rows"] == len(BAD_ROWS) and report["pairs"] == GOOD
    k = list(BAD_ROWS).index("missing image")
    assert report["dropped_examples"]["missing image"] == [f"row {1 + 2 * k} (idx bad-{k})"]
    assert report["rows_read"] == report["train_pairs"] + report["eval_pairs"] + sum(report["dropped"].values())
    kept = sorted(p[0]["content"][-1]["text"] for p in [*data.train["prompt"], *data.eval["prompt"]])
    assert kept == sorted(f"What color is picture {i}?" for i in range(GOOD))
    first = data.train[0]["images"][0]
    assert isinstance(first, Image.Image) and first.mode == "RGB" and max(first.size) <= 64


def test_rows_left_out_by_max_samples_are_counted_too(messy, tmp_path):
    report = run(messy, tmp_path, max_samples=15).report
    assert report["not_sampled"] == GOOD + len(BAD_ROWS) - 15 and report["rows_used"] == 15
    assert report["rows_read"] == (report["train_pairs"] + report["eval_pairs"] + sum(report["dropped"].values())
                                   + report["not_sampled"])


@pytest.mark.parametrize("num_proc", [None, 2])
def test_bad_rows_fail_stops_at_the_first_naming_the_row_and_reason(messy, tmp_path, num_proc):
    with pytest.raises(ConfigError) as error:
        run(messy, tmp_path, rules=RowRules(bad_rows="fail"), num_proc=num_proc)
    message = str(error.value)
    assert message.startswith("DPO_BAD_ROWS=fail: row ") and f"of DPO_DATASET={messy}: " in message
    row = int(message.split("row ")[1].split()[0])
    k = (row - 1) // 2
    assert f"(idx bad-{k})" in message and list(BAD_ROWS)[k] in message
    assert "set DPO_BAD_ROWS=skip" in message


def test_more_bad_rows_than_the_limit_stop_before_training(messy, tmp_path):
    with pytest.raises(ConfigError) as error:
        run(messy, tmp_path, rules=RowRules(max_bad_fraction=0.05))
    message = str(error.value)
    assert "9 of 21 rows (42.9%) are bad, more than DPO_MAX_BAD_FRACTION=0.05: " in message
    assert "(e.g. row " in message and "raise DPO_MAX_BAD_FRACTION" in message


def test_a_set_of_only_bad_rows_and_an_empty_set_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([{**good_row(i), "image": None} for i in range(3)], features=RLAIF_V).to_parquet(bad)
    with pytest.raises(ConfigError, match=r"every one of the 3 rows is bad: missing image: 3 \(e.g. row "):
        run(bad, tmp_path, rules=RowRules(max_bad_fraction=1.0))
    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({column: [] for column in RLAIF_V}, features=RLAIF_V).to_parquet(empty)
    with pytest.raises(ConfigError, match=f"{empty}: no rows"):
        run(empty, tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="empty.jsonl: no rows"):
        run(tmp_path / "empty.jsonl", tmp_path)


def test_wrong_types_in_json_rows_are_counted_and_unparsable_json_is_a_config_error(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "b", "rejected": "c"} for i in range(3)]
    rows.append({"prompt": "q", "chosen": {"text": "b"}, "rejected": "c"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert run(path, tmp_path, eval_fraction=0).report["dropped"] == {"chosen is not text (dict)": 1}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n" + '{"prompt": "q", "chosen": \n')
    with pytest.raises(ConfigError, match=f"{broken}: cannot read it as json"):
        run(broken, tmp_path)


def _two_image_rows(tmp_path):
    picture = {"bytes": encoded(Image.new("RGB", (30, 20), "red")), "path": None}
    rows = [{"prompt": f"Compare the pictures {i}.", "chosen": "Both are red.", "rejected": "One is blue.",
             "images": [picture] * (2 if i == 0 else 1)} for i in range(4)]
    path = tmp_path / "multi.parquet"
    features = datasets.Features({"prompt": S, "chosen": S, "rejected": S, "images": datasets.List(datasets.Image())})
    datasets.Dataset.from_list(rows, features=features).to_parquet(path)
    return path


def test_rows_with_several_images_are_kept_for_models_that_take_them_and_counted_for_the_others(tmp_path):
    path = _two_image_rows(tmp_path)
    several = run(path, tmp_path, rules=RowRules(max_images=None), eval_fraction=0)
    assert several.report["dropped"] == {} and sorted(len(i) for i in several.train["images"]) == [1, 1, 1, 2]
    one = run(path, tmp_path, rules=RowRules(max_images=1, model="llava-next (tiny:llava-next)", max_bad_fraction=0.3),
              eval_fraction=0)
    assert one.report["dropped"] == {"2 images in one row (llava-next (tiny:llava-next) takes 1)": 1}
    with pytest.raises(ConfigError, match=r"has images \(column 'images'\) but causal-lm \(x\) is text-only"):
        run(path, tmp_path, rules=RowRules(max_images=0, model="causal-lm (x)"))


def test_llava_conversation_images_resolve_beside_the_json_or_in_the_image_dir(tmp_path):
    folder = tmp_path / "images" / "00000"
    folder.mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (20 + i, 20), "blue").save(folder / f"{i}.jpg")
        rows.append({"id": str(i), "image": f"00000/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image concisely."},
            {"from": "gpt", "value": f"a blue square, {20 + i} pixels wide"}]})
    rows.append({"id": "gone", "image": "00000/gone.jpg", "conversations": rows[0]["conversations"]})
    beside = tmp_path / "images" / "chat.json"
    beside.write_text(json.dumps(rows))
    data = run(beside, tmp_path, eval_fraction=0)
    assert data.report["format"] == "llava-conversations" and data.report["pairs"] == 4
    assert data.report["dropped_examples"] == {"image file not found": ["row 4 (id gone)"]}
    elsewhere = tmp_path / "chat.json"
    elsewhere.write_text(json.dumps(rows[:4]))
    assert run(elsewhere, tmp_path, rules=RowRules(image_dir=tmp_path / "images"), eval_fraction=0).report["pairs"] == 4
    with pytest.raises(ConfigError, match="every one of the 4 rows is bad: image file not found"):
        run(elsewhere, tmp_path, eval_fraction=0)


def test_prepare_is_deterministic_and_parallel_preparation_gives_the_same_pairs(messy, tmp_path):
    serial = run(messy, tmp_path)
    again = run(messy, tmp_path)
    parallel = run(messy, tmp_path, num_proc=2)
    for other in (again, parallel):
        assert serial.train.to_list() == other.train.to_list() and serial.eval.to_list() == other.eval.to_list()
        assert serial.report == other.report


def test_the_job_skips_a_bomb_and_a_missing_image_or_stops_with_exit_2(messy, tmp_path, cache_dir):
    """The issue's report: a decompression bomb and a row with no image each ended the job with exit 1."""
    settings = dict(model="tiny:llava-next", dataset=str(messy), max_steps=1)
    skipped = run_job(job_env(cache_dir, tmp_path / "a", **settings, max_bad_fraction=0.5), "--dry-run")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "data: dropped 9 rows: " in skipped.stderr and "unreadable image: decompression bomb" in skipped.stderr
    refused = run_job(job_env(cache_dir, tmp_path / "b", **settings), "--dry-run")
    assert refused.returncode == 2 and "more than DPO_MAX_BAD_FRACTION=0.05" in refused.stderr
    failed = run_job(job_env(cache_dir, tmp_path / "c", **settings, bad_rows="fail"))
    assert failed.returncode == 2 and "DPO_BAD_ROWS=fail: row " in failed.stderr
    assert "Traceback" not in refused.stderr + failed.stderr


def test_preparation_takes_a_worker_per_thousand_rows_up_to_the_cpus_unless_told(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert processes_for(500, None) is None and processes_for(1999, None) is None  # one process: no workers
    assert processes_for(2500, None) == 2 and processes_for(80_000, None) == 4
    assert processes_for(10, 3) == 3  # DPO_DATASET_NUM_PROC wins
