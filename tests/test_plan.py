"""The memory plan: its weights part against the bytes a 4-bit model really holds, the layout it reads off each
published architecture, its answers for the real LLaVA-NeXT 7B, and the refusal (exit 2 before loading) on a GPU the
plan does not fit. Its activations against what autograd saves: tests/test_plan_activations.py."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import pytest
import torch

from conftest import ROOT
from entrypoint.config.settings import load_settings
from entrypoint.errors import ConfigError
from entrypoint.models.architecture import describe, load_config
from entrypoint.models.families import FAMILIES
from entrypoint.models.lora import lora_config
from entrypoint.models.published import full_config
from entrypoint.planning.memory import ACT, FP32, GIB, Layout, Workload, layout, plan_memory


def _arch(config, family="llava-next"):
    return describe(config, FAMILIES[family], lora_config(load_settings(), FAMILIES[family]))


def _held_bytes(model) -> int:
    """Parameters and buffers, with each 4-bit layer's quantization state (absmax, nested absmax, code tables)."""
    import bitsandbytes as bnb

    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            parts = [state.absmax, state.code, *([state.state2.absmax, state.state2.code] if state.nested else [])]
            total += sum(t.numel() * t.element_size() for t in parts)
    return total


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_weights_part_is_what_a_quantized_model_holds(tmp_path, quantization):
    """A 2-layer Mistral at 1024 wide, loaded as the job loads it (then prepared: non-quantized parts in fp32)."""
    from peft import prepare_model_for_kbit_training
    from transformers import MistralConfig, MistralForCausalLM

    from entrypoint.models.loading import ModelRef, load_model

    config = MistralConfig(vocab_size=4000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    model = prepare_model_for_kbit_training(load_model(ModelRef(str(tmp_path), FAMILIES["causal-lm"]), quantization))
    plan = plan_memory(_arch(load_config(tmp_path / "config.json"), "causal-lm"), quantization,
                       Workload(batch=1, length=16, answer_tokens=4))
    assert plan.weights == pytest.approx(_held_bytes(model) / GIB, rel=0.02)


@pytest.mark.parametrize(("family", "expected"), [
    ("llava-next", Layout()),  # Mistral layers; CLIP-L keeps its last and feature layer's (-2) fp32 states
    ("llava", Layout()),
    ("idefics2", Layout(vision_states=1, vision_layers=27)),  # SigLIP: the last states only
    # bf16 towers that merge 2 x 2 patches into one text-wide token; Qwen3-VL's three DeepStack layers give as many
    ("qwen2.5-vl", Layout(vision_state_bytes=ACT, vision_states=1, vision_layers=32, vision_merged=3584 * ACT / 4)),
    ("qwen3-vl", Layout(head_norms=True, vision_state_bytes=ACT, vision_states=1, vision_layers=27,
                        vision_merged=4 * 4096 * ACT / 4)),
    # four norms a layer (one on its input), q_norm and k_norm, 256-wide heads; SigLIP
    ("gemma3", Layout(head_dim=256, hidden_norms=3, head_norms=True, vision_states=1, vision_layers=27)),
    ("causal-lm", Layout(vision_state_bytes=0, vision_states=0, vision_layers=0)),
])
def test_the_layout_is_read_off_each_published_architecture(family, expected):
    assert layout(full_config(family), FAMILIES[family]) == expected


@pytest.fixture(scope="module")
def llava_next_7b():
    return _arch(full_config("llava-next"))


def test_plan_for_llava_next_7b_at_1_tile_and_at_full_anyres(llava_next_7b):
    """Lengths are the photos' at each setting: ~1,200 tokens a pair with 1 tile, ~2,400 with the full grid."""
    one_tile = Workload(batch=1, length=1236, answer_tokens=20, images_per_pair=1, tiles_per_image=2)
    anyres = replace(one_tile, length=2400, tiles_per_image=5)
    small, full = plan_memory(llava_next_7b, "4bit", one_tile), plan_memory(llava_next_7b, "4bit", anyres)
    assert 5.0 < small.weights == full.weights < 6.0  # nf4 decoder + fp32 tower, embeddings and head
    assert small.with_context < full.with_context < 40
    assert "24 GB (L4, A10G)" in small.fitting_gpus()
    assert plan_memory(llava_next_7b, "none", one_tile).weights > 2.5 * small.weights


def test_plan_grows_with_batch_and_length_and_shrinks_with_checkpointing(llava_next_7b):
    base = Workload(batch=1, length=2048, answer_tokens=50, images_per_pair=1, tiles_per_image=5)
    plans = [plan_memory(llava_next_7b, "4bit", w) for w in (
        base, replace(base, batch=2), replace(base, length=4096), replace(base, gradient_checkpointing=False))]
    assert plans[0].activations < plans[1].activations and plans[0].activations < plans[2].activations
    assert plans[3].activations > 5 * plans[0].activations  # every layer's activations kept
    assert plans[0].adapter_and_optimizer == pytest.approx(41_943_040 * 4 * 4 / GIB)  # fp32 weights, grads, moments


def test_images_encoded_once_keep_the_towers_output_and_trls_path_its_layers(llava_next_7b):
    """Encoded once, the step keeps the tower's output for chosen and rejected: the last and the feature layer's
    states (transformers 5 captures no other). On TRL's path the tower runs with grad, each of its 24 layers keeping
    its fp32 input for the backward, plus the output."""
    once = Workload(batch=1, length=2400, answer_tokens=20, images_per_pair=1, tiles_per_image=5)
    kept = plan_memory(llava_next_7b, "4bit", once).parts.vision_kept
    assert kept == 2 * 5 * 577 * 2 * 1024 * FP32
    trl = plan_memory(llava_next_7b, "4bit", replace(once, encode_images_once=False)).parts.vision_kept
    assert trl == kept * (24 + 1) / 2


def test_the_lm_head_is_planned_in_tiles_not_full_logits():
    """Gemma 3's 262,208-entry vocabulary: TRL's fused head holds a tile of at most 4,096 tokens by 32,768 entries
    and the weight chunk in bf16, never the (tokens x vocabulary) logits; past 4,096 scored tokens it grows only with
    the hidden width."""
    gemma = _arch(full_config("gemma3"), "gemma3")
    work = Workload(batch=1, length=8192, answer_tokens=2048)  # 4,096 scored tokens: one full tile
    head = plan_memory(gemma, "4bit", work).parts.head
    logits = 2 * 2048 * 262_208 * FP32  # the scored tokens' fp32 logits (the plan used to count 3 such tensors)
    assert head < logits / 6  # a tile, the bf16 weight chunk and the input's gradient: 0.67 GB of 4.3
    longer = plan_memory(gemma, "4bit", replace(work, answer_tokens=4096)).parts.head
    assert longer - head == FP32 * 2560 * 2 * 2048  # the head's input gradient for the 4,096 more, no wider tile


@pytest.fixture
def full_size_model_dir(tmp_path, cache_dir):
    """llava-v1.6-mistral-7b's config.json beside the shapes model's processor: a 7B the plan can count, offline."""
    from entrypoint.models.shapes import build_shapes

    shapes = build_shapes("llava-next", cache_dir / "shapes" / "llava-next")
    model_dir = tmp_path / "llava-next-7b"
    shutil.copytree(shapes, model_dir)
    (model_dir / "config.json").write_text(full_config("llava-next").to_json_string())
    return model_dir


def test_a_gpu_the_plan_does_not_fit_is_refused_naming_the_settings(full_size_model_dir, monkeypatch, caplog):
    import entrypoint.planning.memory
    from entrypoint.models.loading import ModelRef, load_processor
    from entrypoint.planning.memory import check_memory

    model = ModelRef(str(full_size_model_dir), FAMILIES["llava-next"])
    report = {"tokens": {"pair_tokens": {"p95": 2300, "max": 2400}, "answer_tokens": {"p95": 20},
                         "image_tokens_per_image": {"images": 10}, "pairs_measured": 10}}
    monkeypatch.setattr(entrypoint.planning.memory, "device_memory_gib", lambda: 12.0)
    monkeypatch.setenv("DPO_PER_DEVICE_TRAIN_BATCH_SIZE", "4")
    with pytest.raises(ConfigError) as caught:
        check_memory(load_settings(), model, load_processor(model), report)
    message = str(caught.value)
    assert "this one has 12.0 GiB" in message and "DPO_PER_DEVICE_TRAIN_BATCH_SIZE=1 with" in message
    assert "DPO_MAX_IMAGE_TILES=1" in message and "DPO_MEMORY_CHECK=false" in message
    monkeypatch.setenv("DPO_MEMORY_CHECK", "false")
    with caplog.at_level(logging.WARNING, logger="entrypoint"):
        plan = check_memory(load_settings(), model, load_processor(model), report)
    assert plan.with_context > 12 and any("this one has 12.0 GiB" in r.getMessage() for r in caplog.records)


def test_qwen_plan_sizes_the_tower_by_the_processors_pixel_budget_and_names_it(tmp_path, cache_dir, monkeypatch,
                                                                               caplog):
    """Qwen2.5-VL's tower sees max_pixels / 14^2 patches an image, decided by the processor: 65,536 at the published
    12,845,056 pixels, 1,024 at DPO_IMAGE_MAX_PIXELS=200704. The plan says which, and on a GPU it does not fit the
    refusal names DPO_IMAGE_MAX_PIXELS with a value."""
    import entrypoint.planning.memory
    from entrypoint.models.loading import ModelRef, load_processor
    from entrypoint.models.shapes import build_shapes
    from entrypoint.planning.memory import check_memory, plan_for_run

    model_dir = tmp_path / "qwen2.5-vl-7b"  # Qwen2.5-VL-7B's config.json beside the published processor files
    shutil.copytree(build_shapes("qwen2.5-vl", cache_dir / "shapes" / "qwen2.5-vl"), model_dir)
    (model_dir / "config.json").write_text(full_config("qwen2.5-vl").to_json_string())
    model = ModelRef(str(model_dir), FAMILIES["qwen2.5-vl"])
    report = {"tokens": {"pair_tokens": {"p95": 2000, "max": 4000}, "answer_tokens": {"p95": 20},
                         "image_tokens_per_image": {"images": 10}, "pairs_measured": 10}}
    published, capped = (plan_for_run(load_settings(), model, load_processor(model, max_pixels=pixels),
                                      report["tokens"]) for pixels in (None, 200704))
    assert (published[0].vision_patches, capped[0].vision_patches) == (65536, 1024)
    # the same pairs (report): only the tower's share differs, 4 images of 65,536 patches at 1,280 wide in fp32
    assert published[1].activations > capped[1].activations and published[1].weights == capped[1].weights
    monkeypatch.setattr(entrypoint.planning.memory, "device_memory_gib", lambda: 12.0)
    with caplog.at_level(logging.INFO, logger="entrypoint"), pytest.raises(ConfigError) as caught:
        check_memory(load_settings(), model, load_processor(model), report)
    assert "images: at most 12,845,056 pixels each (the checkpoint's own; DPO_IMAGE_MAX_PIXELS lowers it): up to " \
           "16,384 tokens and 65,536 vision patches an image" in caplog.text
    assert "fewer tokens an image: DPO_IMAGE_MAX_PIXELS=802816 (at most 1,024 tokens an image" in str(caught.value)



@pytest.mark.parametrize(("env", "expected"), [
    ({}, True),  # DPOConfig's default
    ({"DPO_GRADIENT_CHECKPOINTING": "false"}, False),
    ({"DPO_ACTIVATION_CHECKPOINTING": "false"}, False),  # transformers 5's name wins, as in the trainer
    ({"DPO_GRADIENT_CHECKPOINTING": "false", "DPO_ACTIVATION_CHECKPOINTING": "true"}, True),
])
def test_the_plan_counts_checkpointing_as_the_trainer_resolves_it(monkeypatch, tmp_path, env, expected):
    from entrypoint.planning.memory import checkpointing
    from entrypoint.training.trainer import dpo_config

    for key, value in {"DPO_MODEL": "tiny:llava-next", "DPO_DATASET": "sample:rlaif-v", **env}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert checkpointing(settings) is expected is dpo_config(settings, tmp_path, "run").gradient_checkpointing


@pytest.mark.parametrize("yaml_file", sorted(p.name for p in (ROOT / "sky").glob("*.yaml")))
def test_every_gpu_a_sky_yaml_may_recover_onto_fits_its_settings(yaml_file, tmp_path, cache_dir, monkeypatch):
    """Managed-job recovery may land on any GPU of the YAML's set: each must hold the plan of the YAML's own settings
    at the published model's size, at DPO_MAX_LENGTH (no data measured: the longest pair the settings allow)."""
    import yaml

    from entrypoint.models.loading import ModelRef, load_processor
    from entrypoint.models.published import PUBLISHED
    from entrypoint.models.shapes import build_shapes
    from entrypoint.planning.cost import GPUS
    from entrypoint.planning.memory import plan_for_run
    from entrypoint.planning.rounds import judge_model

    task = yaml.safe_load((ROOT / "sky" / yaml_file).read_text())
    envs = {k: str(v) for k, v in task["envs"].items() if k.startswith("DPO_") and v not in (None, "")}
    family = next(name for name, published in PUBLISHED.items() if published.repo == envs["DPO_MODEL"])
    model_dir = tmp_path / family  # the published config.json beside the published processor files
    shutil.copytree(build_shapes(family, cache_dir / "shapes" / family), model_dir)
    (model_dir / "config.json").write_text(full_config(family).to_json_string())
    for key, value in {**envs, "DPO_MODEL": str(model_dir)}.items():
        monkeypatch.setenv(key, value)
    settings, model = load_settings(), ModelRef(str(model_dir), FAMILIES[family])
    if settings.judge == "model":  # the judge beside the policy: the published checkpoint's size, as the model's
        assert settings.judge_model == envs["DPO_MODEL"], "a judge of another size needs its config.json here"
        monkeypatch.setenv("DPO_JUDGE_MODEL", str(model_dir))
        settings = load_settings()
    processor = load_processor(model, settings.max_image_tiles, settings.image_max_pixels)
    _, plan, _ = plan_for_run(settings, model, processor, None)
    judge = judge_model(settings, cache_dir)
    if judge:
        plan = replace(plan, beside_gib=judge.weights_gib)
    gpus = [name.split(":")[0] for name in task["resources"]["accelerators"]]
    assert {gpu: plan.fits(GPUS[gpu].usable_gib) for gpu in gpus} == dict.fromkeys(gpus, True), plan.device_gib


def test_a_restart_on_a_gpu_too_small_asks_for_recovery_elsewhere(full_size_model_dir, monkeypatch, tmp_path):
    """The first attempt's refusal is a setting to change (exit 2); a managed job's restart (state.json there, the
    same SKYPILOT_TASK_ID) landed on a smaller GPU of the set: exit 76, which the YAMLs recover on."""
    import entrypoint.planning.memory
    from entrypoint.__main__ import main
    from entrypoint.errors import EXIT_RECOVER_ELSEWHERE, DoesNotFit, RecoverElsewhere
    from entrypoint.job import fitting_plan
    from entrypoint.models.loading import ModelRef, load_processor
    from entrypoint.run.state import RunState

    model = ModelRef(str(full_size_model_dir), FAMILIES["llava-next"])
    monkeypatch.setattr(entrypoint.planning.memory, "device_memory_gib", lambda: 12.0)
    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-managed-2026-12-02-1")
    settings = load_settings()
    first = RunState.open(tmp_path, settings)
    with pytest.raises(DoesNotFit, match="this one has 12.0 GiB"):
        fitting_plan(settings, model, load_processor(model), {}, first)
    first.mark("prepared")
    with pytest.raises(RecoverElsewhere, match="recover it elsewhere"):
        fitting_plan(settings, model, load_processor(model), {}, RunState.open(tmp_path, settings))
    monkeypatch.delenv("SKYPILOT_TASK_ID")  # not a managed job: the settings are what to change
    with pytest.raises(DoesNotFit):
        fitting_plan(settings, model, load_processor(model), {}, RunState.open(tmp_path, settings))

    def recover_elsewhere(*args, **kwargs):
        raise RecoverElsewhere("the memory plan needs 25 GiB")

    monkeypatch.setattr("entrypoint.job.run", recover_elsewhere)
    monkeypatch.setenv("DPO_OUTPUT_DIR", str(tmp_path / "run"))
    assert main([]) == EXIT_RECOVER_ELSEWHERE == 76  # what the YAMLs' recover_on_exit_codes name


def test_the_gpu_memory_planned_against_is_what_this_process_can_have_not_the_cards_total(monkeypatch):
    """A vLLM server beside the job (sky/rlaif_v_onpolicy_vllm.yaml) holds its share of the card from its start: the
    plan counts what is free, plus what this process's torch already holds (the out-of-memory message, mid-run)."""
    import torch

    from entrypoint.planning.memory import GIB, device_memory_gib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(44 * GIB), int(80 * GIB)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: int(6 * GIB))
    assert device_memory_gib() == 50.0
