"""The job at real shapes, as the container runs it: every family's `shapes:` model (the published processor,
chat template and module tree at narrow widths) trains on real-size photos, evaluates, and leaves an adapter that
reloads and changes the model; the image-token knob and the memory plan work end to end; settings TRL would
refuse for vision models, and vision models of unknown families, fail before any model is loaded."""

from __future__ import annotations

import json

import pytest

from conftest import job_env, run_job

# 16 rows of sample:rlaif-v-photos are its 16 sizes (640x480 to 4000x3000, panoramas, tall scans, 336x336,
# 300x1200, 2000x500, 50x50): 14 train pairs over 7 steps, 2 eval pairs, so every size goes through the model.
PHOTOS = dict(dataset="sample:rlaif-v-photos", max_samples="16", max_steps="7", per_device_train_batch_size="2",
              gradient_accumulation_steps="1", learning_rate="5e-3", logging_steps="1", eval_fraction="0.125",
              eval_generations="1", save_steps="100")


def _reloaded_logits_change(output, cache_dir, family: str, image_size=(640, 480)) -> bool:
    import torch
    import transformers
    from peft import PeftModel
    from PIL import Image

    from entrypoint.models.families import FAMILIES
    from entrypoint.models.image_tokens import model_overrides
    from entrypoint.models.loading import processor_class

    base_dir = cache_dir / "shapes" / family
    # as trained: the limited grid, Qwen's lowered max_pixels
    processor = processor_class(FAMILIES[family]).from_pretrained(output / "adapter")
    model_class = getattr(transformers, FAMILIES[family].model_class)
    base = model_class.from_pretrained(base_dir, **model_overrides(FAMILIES[family], processor)).eval()
    prompt = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What color is the square?"}]}], add_generation_prompt=True,
        tokenize=False)
    inputs = processor(text=prompt, images=[Image.new("RGB", image_size, "red")], return_tensors="pt")
    with torch.no_grad():
        before = base(**inputs).logits
        after = PeftModel.from_pretrained(base, output / "adapter")(**inputs).logits
    return before.shape == after.shape and not torch.allclose(before, after)


@pytest.mark.parametrize(("family", "settings"), [
    ("llava-next", {}),
    ("llava-next", {"max_image_tiles": "1"}),  # ~1,000 tokens an image instead of ~2,300: processor and model
    ("llava", {}),
    # 5 crops of up to 980 px an image: the slowest, so fewer and smaller steps (no warm-up: lr > 0 at step 1)
    ("idefics2", {"max_samples": "4", "max_steps": "2", "per_device_train_batch_size": "1", "eval_fraction": "0.25",
                  "warmup_steps": "0"}),
    # Qwen's published max_pixels let a 4000x3000 photo cost 15,301 tokens (below): capped at 256 tokens an image
    ("qwen2.5-vl", {"image_max_pixels": str(256 * 28 * 28)}),
    ("qwen3-vl", {"image_max_pixels": str(256 * 32 * 32)}),
    ("gemma3", {}),  # 896-px SigLIP: every photo 256 tokens (+4), pan-and-scan off as it ships
])
def test_shapes_model_trains_on_real_size_photos_and_the_adapter_reloads(tmp_path, cache_dir, family, settings):
    output = tmp_path / "run"
    result = run_job(job_env(cache_dir, output, model=f"shapes:{family}", **{**PHOTOS, **settings}))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == int(settings.get("max_steps", PHOTOS["max_steps"]))
    assert metrics["eval_before"] and metrics["eval_after"] and metrics["memory"]["plan"]["peak_gib"] > 0
    report = json.loads((output / "data_report.json").read_text())
    assert report["dropped"] == {} and report["tokens"]["answers_cut"] == 0
    if family == "llava-next":  # anyres: the photos cost what they cost llava-v1.6-mistral-7b
        assert report["tokens"]["image_tokens_per_image"]["max"] == (1176 if settings else 2352)
    if family.startswith("qwen"):  # DPO_IMAGE_MAX_PIXELS is the trained processor's max_pixels, saved with it
        assert report["tokens"]["image_tokens_per_image"]["max"] <= 256
        saved = json.loads((output / "adapter" / "processor_config.json").read_text())
        assert saved["image_processor"]["size"]["longest_edge"] == int(settings["image_max_pixels"])
    if family == "gemma3":
        assert report["tokens"]["image_tokens_per_image"] == {"p50": 260, "p95": 260, "max": 260, "images": 16}
    card = (output / "adapter" / "README.md").read_text()
    assert "## Data" in card and "Tokens an image" in card
    if settings.get("max_image_tiles"):
        assert "image_grid_pinpoints=[[336, 336]]" in card  # the base must be loaded with the trained grid
    assert _reloaded_logits_change(output, cache_dir, family)


def test_text_only_shapes_model_with_the_published_chat_template(tmp_path, cache_dir):
    output = tmp_path / "run"
    result = run_job(job_env(cache_dir, output, model="shapes:causal-lm", dataset="sample:text", max_samples="24",
                             max_steps="3", per_device_train_batch_size="2", gradient_accumulation_steps="1",
                             eval_fraction="0.2", eval_generations="1", learning_rate="5e-3"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "data_report.json").read_text())
    assert report["format"] == "preference" and report["tokens"]["pair_tokens"]["max"] > 0
    assert "[INST]" in (output / "adapter" / "chat_template.jinja").read_text()


def test_dry_run_prints_tokens_and_the_memory_plan_of_the_real_model(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", model="shapes:llava-next", dataset="sample:rlaif-v-photos",
                             per_device_train_batch_size="1"), "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert "tokens an image: p50" in log and "memory plan per GPU" in log
    assert "as llava-hf/llava-v1.6-mistral-7b-hf at full size" in log and "7.57B parameters" in log
    assert "fits: 24 GB (L4, A10G)" in log
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("settings", "message"), [
    ({"truncation_mode": "keep_end"}, "DPO_TRUNCATION_MODE=keep_end: image tokens sit in the prompt"),
    ({"precompute_ref_log_probs": "true"}, "DPO_PRECOMPUTE_REF_LOG_PROBS=True: not supported for vision data"),
    ({"padding_free": "true"}, "DPO_PADDING_FREE=True: TRL turns it off for vision data"),
    ({"max_length": "1024"}, "DPO_MAX_LENGTH=1024 drops"),  # every photo's prompt is longer: the budget's limit
])
def test_settings_a_vision_run_cannot_use_exit_2_before_loading(tmp_path, cache_dir, settings, message):
    result = run_job(job_env(cache_dir, tmp_path / "out", model="shapes:llava-next", **{**PHOTOS, **settings}))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "adapter").exists()


@pytest.mark.parametrize(("family", "settings", "message"), [
    # the published max_pixels: the largest photos cost up to 15,597 tokens a prompt, over DPO_MAX_LENGTH=4096
    ("qwen2.5-vl", {}, "spend fewer tokens an image (DPO_IMAGE_MAX_PIXELS=802816 (at most 1,024 tokens an image; "
                       "now 12,845,056 pixels, up to 16,384 tokens))"),
    ("qwen3-vl", {"max_image_tiles": "1"}, "DPO_MAX_IMAGE_TILES=1: qwen3-vl cuts no image into tiles"),
    ("qwen2.5-vl", {"image_max_pixels": "2000"}, "DPO_IMAGE_MAX_PIXELS=2000 is below qwen2.5-vl's min_pixels"),
])
def test_qwen_image_settings_that_cannot_work_exit_2_naming_dpo_image_max_pixels(tmp_path, cache_dir, family, settings,
                                                                                 message):
    result = run_job(job_env(cache_dir, tmp_path / "out", model=f"shapes:{family}", **{**PHOTOS, **settings}))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "adapter").exists()


def test_a_vision_model_of_an_unknown_family_is_refused_not_trained_as_text(tmp_path, cache_dir):
    model = tmp_path / "internvl"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "internvl", "vision_config": {"hidden_size": 1024},
                                                   "image_token_id": 151667}))
    result = run_job(job_env(cache_dir, tmp_path / "out", model=str(model), dataset="sample:rlaif-v"), "--dry-run")
    assert result.returncode == 2
    assert "'internvl' is a vision-language model of a family this job does not support" in result.stderr
    assert "llava-next (llava_next)" in result.stderr and "Traceback" not in result.stderr
