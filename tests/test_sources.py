"""Where data comes from: s3:// (moto over HTTP), local files, Hub ids (offline: a clear error)."""

from __future__ import annotations

import pytest

from conftest import job_env, run_job
from entrypoint.data.images import SizeLimit
from entrypoint.data.prepare import DataSpec, RowRules, prepare
from entrypoint.data.samples import write_sample
from entrypoint.data.sources import check_source, load_rows
from entrypoint.errors import ConfigError


def test_s3_file_and_prefix_load_the_same_rows_and_a_rerun_downloads_nothing(tmp_path, bucket):
    sample = write_sample("rlaif-v", tmp_path / "src", rows=32)
    bucket.upload_file(str(sample), "data", "sets/rlaif/part-0.parquet")
    check_source("s3://data/sets/rlaif")
    by_prefix = load_rows("s3://data/sets/rlaif", "train", tmp_path / "cache")
    by_file = load_rows("s3://data/sets/rlaif/part-0.parquet", "train", tmp_path / "cache")
    assert len(by_prefix) == len(by_file) == 32 and by_prefix["question"] == by_file["question"]
    local = tmp_path / "cache" / "s3" / "data" / "sets" / "rlaif" / "part-0.parquet"
    mtime = local.stat().st_mtime_ns
    load_rows("s3://data/sets/rlaif", "train", tmp_path / "cache")
    assert local.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name", ["rlhf-v", "llava-conversations"])
def test_each_new_format_prepares_from_an_s3_prefix_llava_images_beside_its_json(tmp_path, bucket, name):
    """A LLaVA set on S3 is its JSON and the image folders under one prefix: downloaded together, the image
    paths resolve beside the JSON as they do locally."""
    sample = write_sample(name, tmp_path / "src", rows=16)
    for path in (p for p in sample.parent.rglob("*") if p.is_file()):  # the parquet; or the JSON and its images
        bucket.upload_file(str(path), "data", f"sets/{name}/{path.relative_to(sample.parent)}")
    data = prepare(DataSpec(f"s3://data/sets/{name}", "train"), tmp_path / "cache",
                   RowRules(limit=SizeLimit(longest=64)))
    assert data.report["format"] == name and data.report["pairs"] == 16 and data.report["dropped"] == {}
    assert all(len(images) == 1 for images in data.train["images"])


def test_missing_s3_data_is_a_config_error(bucket):
    with pytest.raises(ConfigError, match="DPO_DATASET=s3://data/nothing/here: no such object, nor a folder"):
        check_source("s3://data/nothing/here")


@pytest.mark.parametrize("args", [(), ("--dry-run",)])  # a dry run streams the first rows to measure them
def test_a_hub_dataset_that_cannot_be_read_exits_2_before_any_model_loads(tmp_path, cache_dir, args):
    result = run_job(job_env(cache_dir, tmp_path / "out", model="tiny:llava-next", dataset="someorg/not-cached"),
                     *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: DPO_DATASET=someorg/not-cached:" in result.stderr and "Traceback" not in result.stderr


def test_an_s3_reference_means_the_same_to_the_check_and_the_download(tmp_path, bucket):
    """`s3://data/sets/rl` is neither the object `sets/rlaif/...` nor a folder of it: the start-up check
    used to pass it (a raw prefix) and the download, after the processor had loaded, fail."""
    sample = write_sample("text", tmp_path / "src", rows=8)
    bucket.upload_file(str(sample), "data", "sets/rlaif/part-0.parquet")
    bucket.upload_file(str(sample), "data", "sets/one.parquet")
    for ref in ("s3://data/sets/rl", "s3://data/sets/rlaif/part", "s3://data/sets/one"):
        with pytest.raises(ConfigError, match=f"DPO_DATASET={ref}: no such object, nor a folder"):
            check_source(ref)
        with pytest.raises(ConfigError, match=f"DPO_DATASET={ref}: no such object, nor a folder"):
            load_rows(ref, "train", tmp_path / "cache")
    for ref in ("s3://data/sets/rlaif", "s3://data/sets/rlaif/", "s3://data/sets/one.parquet", "s3://data/sets"):
        check_source(ref)
        assert len(load_rows(ref, "train", tmp_path / "cache")) >= 8


def _splits_folder(tmp_path):
    import datasets

    folder = tmp_path / "splits"
    folder.mkdir()
    for split, rows in (("train", 6), ("test", 3)):
        datasets.Dataset.from_dict({"prompt": [f"{split} {i}" for i in range(rows)], "chosen": ["a"] * rows,
                                    "rejected": ["b"] * rows}).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return folder


def test_dataset_split_is_honoured_for_local_folders_and_saved_datasets(tmp_path):
    """DPO_DATASET_SPLIT used to be ignored for local, s3:// and sample: data: always `train`."""
    import datasets

    folder = _splits_folder(tmp_path)
    assert load_rows(str(folder), "test", tmp_path)["prompt"] == ["test 0", "test 1", "test 2"]
    assert len(load_rows(str(folder), "train", tmp_path)) == 6
    assert load_rows(str(folder), "train[:2]", tmp_path)["prompt"] == ["train 0", "train 1"]
    with pytest.raises(ConfigError, match=r"DPO_DATASET_SPLIT=validation: .* has the split\(s\) test, train"):
        load_rows(str(folder), "validation", tmp_path)
    with pytest.raises(ConfigError, match=r"DPO_DATASET_SPLIT=test: .*-of-00001.parquet has the split\(s\) train"):
        load_rows(str(folder / "train-00000-of-00001.parquet"), "test", tmp_path)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["x"]}),
                          "dev": datasets.Dataset.from_dict({"prompt": ["y"]})}).save_to_disk(str(saved))
    assert load_rows(str(saved), "dev", tmp_path)["prompt"] == ["y"]
    with pytest.raises(ConfigError, match=r"DPO_DATASET_SPLIT=test: .* has the split\(s\) dev, train"):
        load_rows(str(saved), "test", tmp_path)


def test_dataset_split_is_honoured_for_s3_folders(tmp_path, bucket):
    folder = _splits_folder(tmp_path)
    for path in folder.iterdir():
        bucket.upload_file(str(path), "data", f"split-set/{path.name}")
    assert len(load_rows("s3://data/split-set", "test", tmp_path / "cache")) == 3
    assert len(load_rows("s3://data/split-set", "train", tmp_path / "cache")) == 6
