"""DPO_MERGE: the adapter merged into the dequantized base, written as a plain bf16 model under merged/, listed
in the manifest, uploaded with the run, loadable without PEFT and computing what base + adapter computes."""

from __future__ import annotations

import json

import pytest
from test_job_end_to_end import DEMO

from conftest import completed_run, job_env, run_job
from entrypoint.run.outputs import sha256_file

# merged/ (bf16 weights, loaded in fp32) against the base loaded as training loaded it (4-bit), dequantized, with
# the adapter applied by PEFT (not merged), on one processed eval pair: the only difference is the bf16 rounding
# of the merged weights. Measured max |difference| 0.0020 (tiny:llava-next) and 0.0024 (tiny:causal-lm) on
# logits whose largest magnitude is ~0.65, i.e. 0.3-0.4% of it; the tolerance is 1% of it. The adapter itself
# moves the logits by ~0.62 (~95% of that scale), so a merge that lost it fails by far.
RELATIVE_TOLERANCE = 1e-2
MERGE = dict(DEMO, merge="true", quantization="4bit")
TEXT = dict(MERGE, model="tiny:causal-lm", dataset="sample:text")


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory, cache_dir):
    return completed_run(tmp_path_factory, cache_dir, "merged", **MERGE)


@pytest.fixture(scope="module")
def merged_text_run(tmp_path_factory, cache_dir):
    return completed_run(tmp_path_factory, cache_dir, "merged-text", **TEXT)


def test_merged_dir_is_listed_in_the_manifest_and_holds_a_plain_bf16_model(merged_run):
    from safetensors.torch import load_file

    output, result = merged_run
    merged = output / "merged"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "processor_config.json", "chat_template.jinja"):
        assert (merged / name).is_file(), name
    listed = {entry["path"]: entry for entry in json.loads((output / "manifest.json").read_text())["files"]}
    on_disk = {p.relative_to(output).as_posix() for p in merged.rglob("*") if p.is_file()}
    assert on_disk and on_disk <= set(listed)
    for path in on_disk:
        assert listed[path]["sha256"] == sha256_file(output / path)
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    weights = load_file(merged / "model.safetensors")
    assert weights and all(str(t.dtype) == "torch.bfloat16" for t in weights.values())
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in weights)
    assert "merged model (bf16" in result.stderr


def _eval_pair_inputs(output, processor, vision):
    from entrypoint.data.prepare import load_prepared

    state = json.loads((output / "checkpoints" / "state.json").read_text())
    pair = load_prepared(output / "checkpoints" / "prepared", state["stages"]["prepared"]).eval[0]
    text = processor.apply_chat_template(pair["prompt"] + pair["chosen"], tokenize=False)
    if vision:
        return processor(text=text, images=pair["images"], return_tensors="pt")
    return processor(text, return_tensors="pt")


@pytest.mark.parametrize("run", ["merged_run", "merged_text_run"])
def test_merged_model_computes_what_base_plus_adapter_computes(request, cache_dir, run):
    import torch
    import transformers
    from peft import PeftModel

    from entrypoint.models.loading import load_model, load_processor, resolve_model

    output, _ = request.getfixturevalue(run)
    settings = MERGE if run == "merged_run" else TEXT
    ref = resolve_model(settings["model"], "auto", None, cache_dir)
    processor = load_processor(ref)
    inputs = _eval_pair_inputs(output, processor, ref.family.vision)

    def logits(model):
        with torch.no_grad():
            return model(**inputs).logits.float()

    model_class = getattr(transformers, ref.family.model_class)  # AutoModelForCausalLM for the text family
    merged = model_class.from_pretrained(output / "merged")
    assert merged.dtype == torch.bfloat16 and not hasattr(merged, "peft_config")
    merged_logits = logits(model_class.from_pretrained(output / "merged", dtype=torch.float32))
    base = load_model(ref, "4bit", processor=processor).dequantize()  # as training loaded it, then dequantized
    base_logits = logits(base)
    adapted_logits = logits(PeftModel.from_pretrained(base, output / "adapter"))  # unmerged
    tolerance = RELATIVE_TOLERANCE * adapted_logits.abs().max().item()
    assert (merged_logits - adapted_logits).abs().max().item() <= tolerance
    assert (merged_logits - base_logits).abs().max().item() > 10 * tolerance  # the adapter is in there


def test_the_card_says_how_to_load_the_adapter_and_the_merged_model(merged_run):
    output, _ = merged_run
    card = (output / "adapter" / "README.md").read_text()
    section = card[card.index("## How to load"):]
    assert "PeftModel.from_pretrained(base, " in section
    assert 'LlavaNextForConditionalGeneration.from_pretrained("<run directory>/merged"' in section
    assert "AutoProcessor.from_pretrained(\"<run directory>/merged\")" in section
    assert "dequantized" in section


def test_s3_gets_the_merged_model_with_the_run(merged_run, monkeypatch):
    import boto3

    from entrypoint.publish.s3 import upload_run
    from entrypoint.remote import s3
    from s3_server import moto_server

    output, _ = merged_run
    with moto_server() as url:
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL_S3", url)):
            monkeypatch.setenv(key, value)
        s3.client.cache_clear()
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="runs")
        try:
            upload_run(output, "s3://runs/merged-run")
        finally:
            s3.client.cache_clear()
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="runs")["Contents"]}
    assert "merged-run/merged/model.safetensors" in keys and "merged-run/merged/config.json" in keys
    assert "merged-run/adapter/adapter_model.safetensors" in keys and "merged-run/manifest.json" in keys


def test_a_run_without_merge_leaves_no_merged_dir_behind(tmp_path, cache_dir):
    output = tmp_path / "run"
    (output / "merged").mkdir(parents=True)
    (output / "merged" / "model.safetensors").write_bytes(b"an earlier run's merge")
    result = run_job(job_env(cache_dir, output, **{**DEMO, "max_steps": "1"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (output / "merged").exists()
    listed = [entry["path"] for entry in json.loads((output / "manifest.json").read_text())["files"]]
    assert not any(path.startswith("merged/") for path in listed)
    assert "merged/" not in (output / "adapter" / "README.md").read_text()


def test_a_gpu_the_merge_does_not_fit_is_refused_before_training(monkeypatch, caplog):
    """LLaVA-NeXT 7B in bf16 is ~14 GiB: a 12 GiB GPU can train it in 4-bit but cannot merge it."""
    import logging

    from entrypoint.config.settings import load_settings
    from entrypoint.errors import ConfigError
    from entrypoint.models.architecture import describe
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.lora import lora_config
    from entrypoint.models.published import full_config
    from entrypoint.planning.memory import _check_merge, merge_gib

    family = FAMILIES["llava-next"]
    monkeypatch.setenv("DPO_MERGE", "true")
    arch = describe(full_config("llava-next"), family, lora_config(load_settings(), family))
    assert 14 < merge_gib(arch) < 16
    _check_merge(load_settings(), arch, 40.0)
    with pytest.raises(ConfigError, match=r"the merge \(DPO_MERGE=1\) needs 1\d\.\d GiB .* this one has 12\.0 GiB"):
        _check_merge(load_settings(), arch, 12.0)
    monkeypatch.setenv("DPO_MEMORY_CHECK", "false")
    with caplog.at_level(logging.WARNING, logger="entrypoint"):
        _check_merge(load_settings(), arch, 12.0)
    assert any("DPO_MERGE=1" in r.getMessage() for r in caplog.records)
