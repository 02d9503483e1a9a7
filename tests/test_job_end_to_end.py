"""The job as the container runs it: `python -m entrypoint` with environment variables only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import completed_run, job_env, run_job
from entrypoint.run.outputs import sha256_file

DEMO = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="40", max_steps="6",
            per_device_train_batch_size="4", gradient_accumulation_steps="1", learning_rate="5e-3",
            logging_steps="2", eval_fraction="0.2", eval_generations="1", save_steps="3")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    return completed_run(tmp_path_factory, cache_dir, "run", **DEMO)


def test_prints_where_the_adapter_is_and_the_key_metrics(finished_run):
    output, result = finished_run
    assert f"adapter:  {output / 'adapter'}" in result.stdout and f"report:   {output / 'report.html'}" in result.stdout
    assert "reward accuracy" in result.stdout and "steps 6" in result.stdout
    assert "preference accuracy (likelihood): base " in result.stdout  # base vs tuned, in the summary


def test_evaluates_during_training_and_compares_base_with_tuned(finished_run):
    output, _ = finished_run
    metrics = json.loads((output / "metrics.json").read_text())
    eval_steps = [entry["step"] for entry in metrics["history"] if "eval_loss" in entry]
    assert eval_steps == [0, 2, 4, 6]  # before training, then about 5 times a run (6 steps: every 2)
    assert metrics["eval_after"]["loss"] == metrics["history"][-2]["eval_loss"]  # the last step's, not run again
    preference = metrics["evaluation"]["preference"]
    pairs = json.loads((output / "data_report.json").read_text())["eval_pairs"]
    assert preference["base"]["pairs"] == preference["tuned"]["pairs"] == metrics["evaluation"]["pairs"] == pairs
    assert preference["base"] != preference["tuned"]  # the adapter changed the likelihoods
    rows = {row["metric"]: row for row in metrics["comparison"]}
    assert rows["preference accuracy (likelihood)"]["tuned"] == preference["tuned"]["accuracy"]
    assert rows["DPO loss"]["base"] == pytest.approx(0.6931, abs=1e-4) and "step 0" in rows["DPO loss"]["note"]
    assert "task" not in metrics["evaluation"]  # RLAIF-V's chosen answer is a better answer, not the right one
    sample = metrics["samples"][0]
    assert sample["image"] == "samples/0.jpg" and (output / sample["image"]).stat().st_size > 0
    card = (output / "adapter" / "README.md").read_text()
    assert "| preference accuracy (likelihood) |" in card and "[report.html](report.html)" in card
    assert (output / "adapter" / "report.html").read_bytes() == (output / "report.html").read_bytes()


def test_output_contract(finished_run):
    output, _ = finished_run
    adapter = output / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "processor_config.json",
                 "tokenizer.json"):
        assert (adapter / name).is_file(), name
    assert not (adapter / "training_args.bin").exists()  # pickled args would carry hub_token
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 6
    for key in ("train_loss", "train_runtime", "train_samples_per_second"):
        assert key in metrics["train"]
    for key in ("loss", "rewards/accuracies", "rewards/margins", "runtime", "samples_per_second"):
        assert key in metrics["eval_after"] and key in metrics["eval_before"]
    assert len(metrics["samples"]) == 1 and {"base", "tuned"} <= set(metrics["samples"][0])
    config = json.loads((output / "config.json").read_text())
    assert config["model"] == "tiny:llava-next" and config["max_steps"] == 6
    assert config["dpo_config"]["beta"] == 0.1 and config["dpo_config"]["use_cpu"] is True
    report = json.loads((output / "data_report.json").read_text())
    assert report["format"] == "rlaif-v" and report["train_pairs"] + report["eval_pairs"] == report["pairs"]
    card = (adapter / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "peft" and "base_model" not in metadata  # not a Hub id: no Hub link
    assert "tiny/llava-next\")" in card  # the load snippet names the base model's real location


def test_manifest_is_last_and_its_hashes_match(finished_run):
    output, _ = finished_run
    manifest_path = output / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*")
               if p.is_file() and p.name != "manifest.json" and "checkpoints" not in p.parts}
    assert set(listed) == on_disk
    for path, entry in listed.items():
        assert entry["size"] == (output / path).stat().st_size
        assert entry["sha256"] == sha256_file(output / path)
        assert (output / path).stat().st_mtime_ns <= manifest_path.stat().st_mtime_ns


def test_training_changed_only_the_language_model_lora_weights(finished_run):
    from safetensors.torch import load_file

    output, _ = finished_run
    weights = load_file(output / "adapter" / "adapter_model.safetensors")
    assert weights and not any("vision_tower" in k or "multi_modal_projector" in k for k in weights)
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # PEFT initialises B to zero


def test_saved_adapter_loads_and_changes_the_output(finished_run, cache_dir):
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    output, _ = finished_run
    base_dir = cache_dir / "tiny" / "llava-next"
    processor = AutoProcessor.from_pretrained(output / "adapter")
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {
        "type": "text", "text": "What color is the square?"}]}], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=[Image.new("RGB", (48, 40), "red")], return_tensors="pt")
    base = LlavaNextForConditionalGeneration.from_pretrained(base_dir)
    with torch.no_grad():
        before = base(**inputs).logits
    tuned = PeftModel.from_pretrained(base, output / "adapter")
    with torch.no_grad():
        after = tuned(**inputs).logits
    assert before.shape == after.shape
    assert not torch.allclose(before, after)


def test_dry_run_checks_and_writes_nothing(tmp_path, cache_dir):
    output = tmp_path / "out"
    result = run_job(job_env(cache_dir, output, **DEMO), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dry run" in result.stderr and not output.exists()


@pytest.mark.parametrize(("settings", "message"), [
    ({"lerning_rate": "1e-5"}, "DPO_LERNING_RATE: unknown setting; did you mean DPO_LEARNING_RATE?"),
    ({"beta": "-0.1"}, "DPO_BETA='-0.1': input should be greater than 0"),
    ({"model": "/no/such/model"}, "DPO_MODEL=/no/such/model: no such model directory"),
    ({"dataset": "./no/such.parquet"}, "DPO_DATASET=./no/such.parquet: no such file or directory"),
    ({"dataset": "sample:nope"}, "DPO_DATASET='sample:nope': unknown sample"),
    ({"image_dir": "/no/such/images"}, "DPO_IMAGE_DIR=/no/such/images: no such folder"),
    ({"bad_rows": "ignore"}, "DPO_BAD_ROWS='ignore': must be one of 'skip' or 'fail'"),
    ({"dataset_format": "llava"}, "DPO_DATASET_FORMAT='llava': must be one of"),
    ({"bf16": "true", "fp16": "true"}, "training settings:"),
])
def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path, cache_dir, settings, message):
    result = run_job(job_env(cache_dir, tmp_path / "out", **{**DEMO, **settings}))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {errors[0][7:]}"] and message in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting", ["output_dir", "checkpoint_dir", "cache_dir"])
def test_a_folder_the_job_cannot_write_exits_2_before_any_model_is_loaded(tmp_path, cache_dir, setting):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = job_env(cache_dir, tmp_path / "out", **DEMO)
    env[f"DPO_{setting.upper()}"] = str(blocker / "run")
    result = run_job(env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: DPO_{setting.upper()}={blocker / 'run'}: {blocker} is a file, not a folder" in result.stderr
    assert "model tiny:llava-next" not in result.stderr  # refused before the model was resolved


def test_a_folder_only_another_user_may_write_names_the_setting_and_the_fix(tmp_path):
    """What a container (uid 1000) meets with a volume only root may write. As root, the check runs in a child
    process that drops to uid 65534 (in a folder under /tmp it may look into); otherwise the folder is made
    read-only for its owner."""
    import os
    import tempfile

    from entrypoint.errors import ConfigError
    from entrypoint.run.outputs import check_writable

    top = Path(tempfile.mkdtemp(dir="/tmp"))
    top.chmod(0o755)
    locked = top / "locked"
    locked.mkdir(mode=0o755)
    if os.geteuid() != 0:
        locked.chmod(0o555)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            check_writable(locked / "run" / "outputs", "DPO_OUTPUT_DIR")
            os.write(write, b"accepted")
        except ConfigError as exc:
            os.write(write, str(exc).encode())
        except BaseException as exc:  # noqa: BLE001 - whatever it was, the parent's assertion shows it
            os.write(write, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(child, 0)
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    assert message.startswith(f"DPO_OUTPUT_DIR={locked / 'run' / 'outputs'}: {locked} is not writable by the job "
                              f"(uid {uid})") and f"chown -R {uid}" in message and "--user" in message
    shutil.rmtree(top)
    check_writable(tmp_path / "free" / "run", "DPO_OUTPUT_DIR")  # a folder yet to be made, under a writable one
    assert not (tmp_path / "free").exists()  # nothing created: a dry run leaves no trace


@pytest.mark.parametrize(("model", "dataset", "fmt"), [
    ("tiny:llava", "sample:vqa-rad", "vqa-rad"),  # medical imaging: pairs built from answers
    ("tiny:idefics2", "sample:rlaif-v", "rlaif-v"),
    ("tiny:llava-next", "sample:llava-conversations", "llava-conversations"),  # multi-turn, EXIF, JPEG files
    ("tiny:llava", "sample:rlhf-v", "rlhf-v"),
    ("tiny:qwen2.5-vl", "sample:rlaif-v", "rlaif-v"),  # mrope positions and image grids through TRL's collator
    ("tiny:qwen3-vl", "sample:vqa-rad", "vqa-rad"),
    ("tiny:gemma3", "sample:rlhf-v", "rlhf-v"),  # token_type_ids through TRL's collator
    ("tiny:causal-lm", "sample:text", "preference"),  # text-only preference tuning
])
def test_every_family_and_scenario_trains_and_publishes_the_contract(tmp_path, cache_dir, model, dataset, fmt):
    from safetensors.torch import load_file

    output = tmp_path / "run"
    result = run_job(job_env(cache_dir, output, **{**DEMO, "model": model, "dataset": dataset, "max_steps": "3"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output / "data_report.json").read_text())["format"] == fmt
    assert (output / "manifest.json").is_file()
    weights = load_file(output / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)
    metrics = json.loads((output / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    if fmt == "vqa-rad":  # the answer is the right one: every eval question scored, base and tuned
        task = evaluation["task"]
        assert sum(kind["questions"] for kind in task.values()) == evaluation["pairs"]
        assert all(0 <= kind[model] <= 1 for kind in task.values() for model in ("base", "tuned"))
        if "closed" in task:  # the yes/no questions, by the model's yes and no tokens
            assert metrics["yes_no"]["questions"] == task["closed"]["questions"]
            assert metrics["yes_no"]["tuned"]["accuracy"] == task["closed"]["tuned"]


def test_a_dry_run_loads_no_weights_but_runs_every_start_up_check(tmp_path, cache_dir):
    """A local model whose weights file is garbage: a dry run never reads it (exit 0), a real run does (not 0);
    a dry run still runs the publishing destinations' start-up checks (a missing S3 bucket: exit 2)."""
    import shutil

    from entrypoint.models.tiny import build_tiny

    model = tmp_path / "model"
    shutil.copytree(build_tiny("llava-next", tmp_path / "built"), model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    settings = {**DEMO, "model": str(model), "max_steps": "1"}
    dry = run_job(job_env(cache_dir, tmp_path / "dry", **settings), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "memory plan" in dry.stderr.lower() or "dry run" in dry.stderr
    real = run_job(job_env(cache_dir, tmp_path / "real", **settings))
    assert real.returncode == 1, real.stderr[-2000:]  # the weights are read only by a real run: found after loading
    assert "the job failed with an unexpected error" in real.stderr and "Traceback" in real.stderr
    from s3_server import moto_server

    with moto_server() as url:  # no bucket "runs" there
        env = job_env(cache_dir, tmp_path / "s3", **settings, s3_uri="s3://runs/x")
        env.update({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL_S3": url})
        missing = run_job(env, "--dry-run")
    assert missing.returncode == 2 and "DPO_S3_URI=s3://runs/x" in missing.stderr, missing.stderr[-2000:]


@pytest.mark.parametrize("settings", [
    {"log_format": "json"},  # every line of the log one JSON object, the libraries' lines too
    {"quantization": "8bit"},
    {"lora_vision": "true"},  # LoRA on the vision tower too: TRL's own image path (the tower trains)
])
def test_log_format_json_8bit_and_lora_on_the_vision_tower_run_end_to_end(tmp_path, cache_dir, settings):
    from safetensors.torch import load_file

    output = tmp_path / "run"
    result = run_job(job_env(cache_dir, output, **{**DEMO, "max_steps": "2", "eval_generations": "0", **settings}))
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_file(output / "adapter" / "adapter_model.safetensors")
    if settings.get("log_format") == "json":
        lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
        assert {"time", "level", "logger", "message"} <= set(lines[0])
        assert any(line["logger"] == "entrypoint.progress" and "step 2/2" in line["message"] for line in lines)
    if settings.get("quantization") == "8bit":
        assert json.loads((output / "config.json").read_text())["quantization"] == "8bit"
        assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)
    if settings.get("lora_vision"):
        assert any("vision_tower" in k and "lora_B" in k for k in weights)
        assert "images encoded by TRL's own path" in result.stderr

