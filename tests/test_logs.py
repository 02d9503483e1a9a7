"""A quiet, useful log: each warning once, progress with counts and an ETA for every long stage."""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter

import pytest

from conftest import job_env, run_job, settings_from
from entrypoint import logs
from entrypoint.logs import progress, setup_logging
from entrypoint.training.callbacks import ProgressLogCallback

PROGRESS = "entrypoint.progress"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def plain(monkeypatch):
    """Progress as in cloud logs (no terminal)."""
    monkeypatch.setattr(logs, "progress_is_a_bar", lambda: False)


@pytest.fixture
def logging_restored():
    """setup_logging changes process-wide state: put it back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    py_warnings = logging.getLogger("py.warnings")
    filters = py_warnings.filters[:]
    yield
    root.handlers[:], py_warnings.filters[:] = handlers, filters
    root.setLevel(level)
    logging.captureWarnings(False)


def test_progress_lines_count_share_elapsed_eta_and_close(plain, caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger=PROGRESS), \
            progress("data: formatting pairs", 50, "rows", clock=clock) as advance:
        for _ in range(50):
            clock.now += 0.25
            advance(1)
    assert caplog.messages == [
        "data: formatting pairs: 40/50 rows (80%), 10.0 s elapsed, ETA 2.5 s",  # the first after 10 s
        "data: formatting pairs: 50/50 rows (100%), 12.5 s elapsed, ETA 0.0 s",  # the last item
        "data: formatting pairs: 50/50 rows in 12.5 s (4.0 rows/s)",
    ]
    assert {r.name for r in caplog.records} == {PROGRESS}


def test_progress_in_bytes_with_long_durations(plain, caplog):
    clock = FakeClock()
    total = 3 * 2**30
    with caplog.at_level(logging.INFO, logger=PROGRESS), progress("s3: upload", total, "B", clock=clock) as sent:
        clock.now += 100
        sent(2**30)
        clock.now += 4000
        sent(2 * 2**30)
    assert caplog.messages == [
        "s3: upload: 1.0/3.0 GiB (33%), 1 min 40 s elapsed, ETA 3 min 20 s",
        "s3: upload: 3.0/3.0 GiB (100%), 1 h 08 min elapsed, ETA 0.0 s",
        "s3: upload: 3.0/3.0 GiB in 1 h 08 min (767.3 KiB/s)",
    ]


def test_progress_closes_a_real_clock_block_and_an_error_gets_no_closing_line(plain, caplog):
    with caplog.at_level(logging.INFO, logger=PROGRESS):
        with progress("evaluation: answers", 2, "prompts") as advance:
            advance()
            advance()
        clock = FakeClock()
        with progress("evaluation: answers", 2, "prompts", clock=clock) as advance:
            clock.now += 63
            advance(2)
        with pytest.raises(RuntimeError), progress("hub: upload", 2, "files") as advance:
            advance()
            raise RuntimeError("network")
    assert re.fullmatch(r"evaluation: answers: 2/2 prompts \(100%\), \d+\.\d s elapsed, ETA 0\.0 s", caplog.messages[0])
    assert caplog.messages[1].startswith("evaluation: answers: 2/2 prompts in ")
    assert caplog.messages[2:] == ["evaluation: answers: 2/2 prompts (100%), 1 min 03 s elapsed, ETA 0.0 s",
                                   "evaluation: answers: 2/2 prompts in 1 min 03 s (31.5 s each)"]


def test_datasets_map_rows_are_counted_from_its_workers_too(plain, caplog):
    from datasets import Dataset, arrow_dataset

    from entrypoint.data.prepare import counted_rows

    bar_class = arrow_dataset.hf_tqdm
    rows = Dataset.from_dict({"x": list(range(40))})
    with caplog.at_level(logging.INFO, logger=PROGRESS), counted_rows("data: formatting pairs", len(rows)):
        doubled = rows.map(lambda row: {"x": 2 * row["x"]}, num_proc=2)
    assert doubled["x"][-1] == 78 and arrow_dataset.hf_tqdm is bar_class  # datasets' own bar is back
    assert caplog.messages[-2].startswith("data: formatting pairs: 40/40 rows (100%)")
    assert caplog.messages[-1].startswith("data: formatting pairs: 40/40 rows in ")


def test_training_lines_have_elapsed_time_and_eta():
    from transformers import TrainerControl, TrainerState

    clock = FakeClock()
    callback = ProgressLogCallback(clock=clock)
    state = TrainerState(global_step=10, max_steps=50)  # resumed at step 10: the pace counts from here
    callback.on_train_begin(None, state, TrainerControl())
    clock.now += 20
    state.global_step = 20
    with pytest.MonkeyPatch.context() as patch:
        records: list[str] = []
        patch.setattr(logs.progress_log, "info", lambda fmt, *args: records.append(fmt % args))
        callback.on_log(None, state, TrainerControl(), logs={"loss": 0.61234, "learning_rate": 1e-5})
        callback.on_train_end(None, state, TrainerControl())
        callback.on_log(None, state, TrainerControl(), logs={"eval_loss": 0.5})
    assert records == ["step 20/50 (40%), 20.0 s elapsed, ETA 1 min 00 s: loss 0.6123, learning_rate 1e-05",
                       "step 20/50: eval_loss 0.5"]


def test_a_warning_is_logged_once_even_when_the_registry_is_reset(logging_restored, capsys):
    setup_logging()
    for _ in range(2):
        warnings.resetwarnings()  # what a library's warnings.simplefilter or catch_warnings also does
        warnings.warn("the same thing again", UserWarning, stacklevel=1)
    warnings.warn("something else", UserWarning, stacklevel=1)
    lines = [line for line in capsys.readouterr().err.splitlines() if "WARNING py.warnings" in line]
    assert len(lines) == 2 and "the same thing again" in lines[0] and "something else" in lines[1]


def test_transformers_checkpointing_renames_called_by_trl_and_peft_are_filtered(logging_restored, capsys):
    warnings.simplefilter("always")  # pytest's configuration ignores FutureWarning
    setup_logging()
    for method in ("is_gradient_checkpointing", "gradient_checkpointing_enable", "gradient_checkpointing_disable"):
        warnings.warn_explicit(f"`{method}` is deprecated and will be removed in v6. Use ...", FutureWarning,
                               "modeling_utils.py", 1, module="transformers.modeling_utils")
    warnings.warn_explicit("`something_else` is deprecated", FutureWarning, "modeling_utils.py", 2,
                           module="transformers.modeling_utils")
    err = capsys.readouterr().err
    assert "something_else" in err and "gradient_checkpointing" not in err


def test_dpo_config_uses_activation_checkpointing_without_a_warning(monkeypatch, tmp_path):
    from trl import DPOConfig  # noqa: F401 - imported first: importing it may warn, and that is not tested here

    from entrypoint.training.trainer import dpo_config

    for env, expected in (({}, True), ({"DPO_GRADIENT_CHECKPOINTING": "false"}, False),
                          ({"DPO_ACTIVATION_CHECKPOINTING": "false", "DPO_GRADIENT_CHECKPOINTING": "true"}, False)):
        for key in ("DPO_GRADIENT_CHECKPOINTING", "DPO_ACTIVATION_CHECKPOINTING"):
            monkeypatch.delenv(key, raising=False)
        settings = settings_from(monkeypatch, **env)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = dpo_config(settings, tmp_path, "run")
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
        assert args.activation_checkpointing is expected and args.gradient_checkpointing is expected, env
    settings = settings_from(monkeypatch, DPO_GRADIENT_CHECKPOINTING_KWARGS='{"use_reentrant": true}')
    assert dpo_config(settings, tmp_path, "run").activation_checkpointing_kwargs == {"use_reentrant": True}


def test_s3_upload_logs_bytes_and_files(plain, caplog, tmp_path, monkeypatch):
    import boto3

    from entrypoint.publish.s3 import upload_run
    from entrypoint.remote import s3
    from entrypoint.run.outputs import write_manifest
    from s3_server import moto_server

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 3 * 2**20)
    (tmp_path / "metrics.json").write_text("{}")
    write_manifest(tmp_path, "run-a")
    with moto_server() as url:
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL_S3", url)):
            monkeypatch.setenv(key, value)
        s3.client.cache_clear()
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="runs")
        with caplog.at_level(logging.INFO):
            upload_run(tmp_path, "s3://runs/p")
        s3.client.cache_clear()
    progress_lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS]
    assert re.fullmatch(r"s3: upload to s3://runs/p: 3\.0/3\.0 MiB \(100%\), .* elapsed, ETA 0\.0 s", progress_lines[0])
    assert progress_lines[-1].startswith("s3: upload to s3://runs/p: 3.0/3.0 MiB in ")
    assert "s3: uploading 3 files (3.0 MiB) to s3://runs/p; 0 already there" in caplog.messages
    assert any(m.startswith("s3: uploaded p/manifest.json (") and m.endswith("file 3 of 3)") for m in caplog.messages)


def test_hub_upload_logs_files_and_bytes_before_and_the_time_after(caplog, tmp_path):
    class Api:
        def create_repo(self, *args, **kwargs):
            pass

        def upload_folder(self, **kwargs):
            return type("Commit", (), {"commit_url": "https://huggingface.co/me/m/commit/1"})()

    from entrypoint.publish.hub import publish_adapter

    (tmp_path / "plots").mkdir()
    (tmp_path / "adapter_model.safetensors").write_bytes(b"w" * 2048)
    (tmp_path / "plots" / "loss.png").write_bytes(b"p" * 1024)
    with caplog.at_level(logging.INFO, logger="entrypoint.publish.hub"):
        assert publish_adapter(tmp_path, "me/m", True, "run", api=Api()).endswith("/commit/1")
    assert caplog.messages[0] == f"hub: uploading 2 files (3.0 KiB) from {tmp_path} to me/m"
    assert re.fullmatch(r"hub: me/m committed in \d+\.\d s", caplog.messages[1])


DEMO = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="64", max_steps="20",
            per_device_train_batch_size="4", gradient_accumulation_steps="1", learning_rate="5e-3",
            logging_steps="5", save_steps="10", eval_fraction="0.25", report_to="wandb")


@pytest.mark.slow
def test_the_demo_says_each_warning_once_and_shows_progress(tmp_path, cache_dir):
    env = job_env(cache_dir, tmp_path / "out", **DEMO)
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_PROJECT": "dpo-job-test",
                "OMP_NUM_THREADS": "1"})  # a tiny model: a second thread gains nothing, and spins on a busy CPU
    (tmp_path / "wandb").mkdir()
    result = run_job(env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    warned = Counter(re.sub(r"^\S+ \S+ WARNING ", "", line) for line in lines
                     if re.match(r"^\S+ \S+ WARNING ", line) or line.startswith("wandb: WARNING"))
    assert warned and max(warned.values()) == 1, warned  # (bitsandbytes warns once at import)
    assert "FutureWarning" not in result.stderr and "URL not available" not in result.stderr
    progress_lines = "\n".join(line.partition(" entrypoint.progress: ")[2] for line in lines)
    assert re.search(r"^data: formatting pairs: 48/48 rows \(100%\), .* elapsed, ETA ", progress_lines, re.M)
    assert re.search(r"^data: formatting pairs: 48/48 rows in ", progress_lines, re.M)
    assert re.search(r"^step 5/20 \(25%\), \d+\.\d s elapsed, ETA \d+\.\d s: loss ", progress_lines, re.M)
    assert re.search(r"entrypoint\.model: model: loading .*llava-next \(llava-next, 4bit, weights .* on disk\)",
                     result.stderr)
    assert "entrypoint.model: model: loaded in " in result.stderr
    assert not (tmp_path / "out" / "checkpoints" / "README.md").exists()  # TRL's model card is not written
