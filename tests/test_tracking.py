"""Tracking and logs: a wandb run (offline, for real) that a restart resumes by id, whose config holds
the settings redacted; JSON log lines; secrets masked in every line, the libraries' included."""

from __future__ import annotations

import json
import logging
import struct
import time
import warnings
from pathlib import Path

import pytest

from entrypoint.logs import MASK, setup_logging
from entrypoint.training.callbacks import ProgressLogCallback, SettingsToWandb
from entrypoint.training.tracking import setup_wandb, wandb_run_id

CANARIES = {"HF_TOKEN": "hf_canaryTracking0123", "WANDB_API_KEY": "canary-wandb-key-0123456789",
            "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-0123", "DPO_HUB_TOKEN": "canary-dpo-hub-token-0123"}


def test_wandb_run_id_is_stable_per_run_name_and_valid():
    first = wandb_run_id("tiny-llava-next-sample-rlaif-v")
    assert first == wandb_run_id("tiny-llava-next-sample-rlaif-v") != wandb_run_id("other")
    assert all(c.isalnum() or c in "-_." for c in first)
    assert wandb_run_id("x" * 96) != wandb_run_id("x" * 95 + "y")  # long names differ in the hash, not the prefix


def wandb_records(path: Path, timeout: float = 30.0) -> list:
    """The records of a finished offline run's .wandb file, once its writer is done with it: wandb.finish() can
    return before wandb-core has flushed the file, which then ends before its last records (the summary, the exit),
    or in the middle of one. Waits, up to `timeout` seconds, for the file to end with the run's `exit` record."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _records(path.read_bytes())
        except DecodeError:
            records = []
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout:.0f} s"
        time.sleep(0.05)


def _records(data: bytes) -> list:
    """The records in a .wandb file's bytes (LevelDB log format: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2

    records, pending, pos = [], b"", 7  # 7-byte ":W&B" header
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def logged_config(records: list) -> dict:
    config = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            for item in (record.run.config if kind == "run" else record.config).update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


def train_begin_and_finish(settings, args) -> None:
    """What the Trainer does with its callbacks at the start of training, then wandb's end of run."""
    import wandb
    from transformers import TrainerControl, TrainerState
    from transformers.integrations import WandbCallback

    from entrypoint.config.settings import public_dict

    for callback in (WandbCallback(), SettingsToWandb(public_dict(settings))):  # the Trainer's order
        callback.on_train_begin(args, TrainerState(), TrainerControl(), model=None)
    wandb.log({"loss": 0.5})
    wandb.finish()


def test_offline_wandb_run_resumes_by_id_and_logs_redacted_settings(tmp_path, monkeypatch):
    from entrypoint.config.settings import load_settings
    from entrypoint.training.trainer import dpo_config

    for name, value in {**CANARIES, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                        "DPO_REPORT_TO": "wandb", "DPO_BETA": "0.3"}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME"):  # setup_wandb sets them: restore after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    settings = load_settings()
    for _attempt in range(2):  # a run, then its restart
        setup_wandb("run-x")
        train_begin_and_finish(settings, dpo_config(settings, tmp_path / "checkpoints", "run-x"))

    attempts = [wandb_records(path) for path in sorted((tmp_path / "wandb").glob("offline-run-*/*.wandb"))]
    runs = [next(r.run for r in records if r.WhichOneof("record_type") == "run") for records in attempts]
    assert [(run.run_id, run.display_name) for run in runs] == [(wandb_run_id("run-x"), "run-x")] * 2
    config = logged_config(attempts[-1])
    assert config["job"]["beta"] == 0.3 and config["job"]["hub_token"] == "***" and config["beta"] == 0.3
    assert config["hub_token"] == "<HUB_TOKEN>"  # the trainer's own to_dict() masks *_token fields
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not [name for name, value in CANARIES.items() if value.encode() in path.read_bytes()], path


@pytest.fixture
def restore_logging(monkeypatch):
    """setup_logging rewires the root and library loggers; put them back after the test."""
    for name in ("", "transformers", "datasets"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
    yield
    logging.captureWarnings(False)


def test_json_logs_one_object_per_line_with_secrets_masked(monkeypatch, capsys, restore_logging):
    monkeypatch.setenv("WANDB_API_KEY", CANARIES["WANDB_API_KEY"])
    setup_logging("json", [CANARIES["DPO_HUB_TOKEN"]])
    logging.getLogger("x").info("key %s and %s", CANARIES["WANDB_API_KEY"], CANARIES["DPO_HUB_TOKEN"])
    try:
        raise RuntimeError(f"bad token {CANARIES['DPO_HUB_TOKEN']}")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines())
    assert first["message"] == f"key {MASK} and {MASK}" and first["level"] == "INFO" and first["logger"] == "x"
    assert first["time"].endswith("Z")
    assert f"RuntimeError: bad token {MASK}" in second["exception"]


def test_library_logs_and_warnings_come_out_in_the_same_format_masked(monkeypatch, capsys, restore_logging):
    monkeypatch.setenv("HF_TOKEN", CANARIES["HF_TOKEN"])
    setup_logging("json")
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.trainer").warning("token %s", CANARIES["HF_TOKEN"])
    logging.getLogger("datasets.builder").warning("from datasets")
    warnings.warn("careful", UserWarning, stacklevel=1)
    entries = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [(e["logger"], e["message"]) for e in entries[:2]] == [
        ("transformers.trainer", f"token {MASK}"), ("datasets.builder", "from datasets")]
    assert entries[2]["logger"] == "py.warnings" and "careful" in entries[2]["message"]


def test_progress_lines_for_cloud_logs(caplog):
    from transformers import TrainerControl, TrainerState

    state = TrainerState(global_step=20, max_steps=100)
    with caplog.at_level(logging.INFO, logger="entrypoint.progress"):
        ProgressLogCallback().on_log(None, state, TrainerControl(), logs={
            "loss": 0.61234, "rewards/accuracies": 0.75, "rewards/margins": 0.1, "grad_norm": 3.0})
    assert caplog.messages == ["step 20/100: loss 0.6123, rewards/accuracies 0.75, rewards/margins 0.1"]


def test_base_vs_tuned_and_the_samples_with_their_images_go_to_wandb(tmp_path, monkeypatch):
    import wandb
    from PIL import Image

    from entrypoint.training.tracking import log_evaluation

    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "samples").mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "samples" / "0.jpg")
    rows = [{"metric": "preference accuracy (likelihood)", "base": 0.25, "tuned": 0.75, "count": 4, "note": ""},
            {"metric": "DPO loss", "base": None, "tuned": 0.5, "count": 4, "note": ""}]
    samples = [{"prompt": "What is this?", "chosen": "A red box.", "rejected": "A cat.", "base": "Box",
                "tuned": "A red box.", "image": "samples/0.jpg"},
               {"prompt": "Say hi.", "chosen": "Hi", "rejected": "Bye", "base": "Yo", "tuned": "Hi", "image": None}]
    run = wandb.init(project="test", dir=str(tmp_path), mode="offline", id="eval-table")  # not an earlier test's
    run_dir = Path(run.dir).parent
    log_evaluation(rows, samples, tmp_path)
    wandb.finish()

    summary = {}
    for record in wandb_records(next(run_dir.glob("*.wandb"))):
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    assert summary["eval/preference accuracy (likelihood)/base"] == 0.25
    assert summary["eval/preference accuracy (likelihood)/tuned"] == 0.75
    assert "eval/DPO loss/base" not in summary and summary["eval/DPO loss/tuned"] == 0.5
    # A table logged to a run goes out as a run_table artifact holding the table and its images (the run's own
    # copy in files/media has placeholders).
    artifact = next(r.artifact for r in wandb_records(next(run_dir.glob("*.wandb")))
                    if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "run_table")
    entries = {Path(entry.path).name: entry for entry in artifact.manifest.contents}
    table = json.loads(Path(entries["samples.table.json"].local_path).read_text())
    assert table["columns"] == ["image", "prompt", "chosen", "rejected", "base", "tuned"]
    assert [row[1:] for row in table["data"]] == [["What is this?", "A red box.", "A cat.", "Box", "A red box."],
                                                 ["Say hi.", "Hi", "Bye", "Yo", "Hi"]]
    image = table["data"][0][0]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (40, 30)
    assert Image.open(entries["0.jpg"].local_path).size == (40, 30) and table["data"][1][0] is None


def test_a_point_a_round_in_an_offline_wandb_run(tmp_path, monkeypatch):
    """job.py's on_round (log_round) into a real offline run: one history row a round, on the `round` axis."""
    import wandb

    from entrypoint.training.tracking import log_round, round_point

    assert round_point({"round": 1, "mean_score": 0.25, "pairs": 7, "heldout_mean_score": None}) == {
        "round/mean_score": 0.25, "round/pairs": 7, "round": 1}  # no held-out prompts: no held-out figure
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    log_round({"round": 1, "mean_score": 0.5, "pairs": 3, "heldout_mean_score": 0.0})  # no run open: nothing
    wandb.init(project="dpo-job-test", dir=str(tmp_path), mode="offline")  # wandb keeps an earlier test's setup
    for r in (1, 2):
        log_round({"round": r, "prompts": 4, "samples": 16, "pairs": 3 + r, "mean_score": 0.25 * r,
                   "heldout_base": 0.0, "heldout_mean_score": 0.5 * r, "global_step": 8 * r})
    wandb.finish()
    [path] = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(path) if record.WhichOneof("record_type") == "history"]
    points = [{k: v for k, v in row.items() if k.startswith("round")} for row in rows]
    assert points == [{"round/mean_score": 0.25, "round/pairs": 4, "round/heldout_mean_score": 0.5, "round": 1},
                      {"round/mean_score": 0.5, "round/pairs": 5, "round/heldout_mean_score": 1.0, "round": 2}]
