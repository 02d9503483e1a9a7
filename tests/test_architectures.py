"""The published architectures, built full size on the meta device, against the family registry; and the
`shapes:` models against them: same processor files, same geometry, same module tree, narrow widths."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from entrypoint.config.settings import load_settings
from entrypoint.errors import ConfigError
from entrypoint.models.architecture import describe, meta_model, with_lora
from entrypoint.models.families import FAMILIES
from entrypoint.models.lora import lora_config
from entrypoint.models.published import PUBLISHED, full_config
from entrypoint.models.shapes import build_shapes

FAMILY_NAMES = tuple(PUBLISHED)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def full(request):
    family = request.param
    return family, meta_model(full_config(family), FAMILIES[family])


def _linears(model) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_parameter_count_is_the_published_one_within_1_percent(full):
    family, model = full
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED[family].params_billion * 1e9, rel=0.01)


def test_every_name_kept_out_of_4bit_is_a_real_module_and_covers_the_whole_vision_side(full):
    from transformers.quantizers.quantizers_utils import should_convert_module

    family, model = full
    names = dict(model.named_modules())
    for kept in FAMILIES[family].keep_full_precision:
        assert kept in names, f"{family}: {kept} is not a module of {type(model).__name__}"
    quantized = {n for n in _linears(model) if should_convert_module(n, FAMILIES[family].keep_full_precision)}
    vision = {n for n in _linears(model) if n.startswith(FAMILIES[family].vision_modules)} \
        if FAMILIES[family].vision_modules else set()
    assert quantized and not quantized & vision and "lm_head" not in quantized
    text_layers = {n for n in _linears(model) if re.search(r"(language|text)_model\.layers\.|^model\.layers\.", n)}
    assert text_layers and text_layers <= quantized  # every decoder linear layer is quantized
    assert set(_linears(model)) - text_layers - {"lm_head"} <= vision  # the rest is the vision side, all of it kept
    for projector in FAMILIES[family].projector_modules:  # DPO_TRAIN_PROJECTOR's modules: real, and on the vision side
        assert projector in names and projector.startswith(FAMILIES[family].vision_modules), projector


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_default_lora_adapts_exactly_the_language_model_linear_layers(family):
    model = meta_model(full_config(family), FAMILIES[family])  # its own: PEFT wraps the model in place
    linears = _linears(model)
    adapted = with_lora(model, lora_config(load_settings(), FAMILIES[family]))
    wrapped = {name.removeprefix("base_model.model.").removesuffix(".lora_A") for name, _ in adapted.named_modules()
               if name.endswith(".lora_A")}
    text = full_config(family).get_text_config()
    assert len(wrapped) == 7 * text.num_hidden_layers  # q, k, v, o, gate, up, down in every layer
    assert not any(part in name for name in wrapped
                   for part in ("vision", "visual", "projector", "connector", "merger", "lm_head"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    by_hand = sum(16 * (m.in_features + m.out_features) for n, m in linears.items() if n in wrapped)
    assert trainable == by_hand  # r x (in + out) for each adapted layer, at the default rank 16


def test_lora_on_the_vision_side_too_when_asked(monkeypatch):
    monkeypatch.setenv("DPO_LORA_VISION", "true")
    model = meta_model(full_config("llava-next"), FAMILIES["llava-next"])
    adapted = with_lora(model, lora_config(load_settings(), FAMILIES["llava-next"]))
    assert any("vision_tower" in name and name.endswith("lora_A") for name, _ in adapted.named_modules())


def test_a_lora_target_list_that_matches_nothing_is_refused_before_loading(monkeypatch):
    monkeypatch.setenv("DPO_LORA_TARGET_MODULES", "qkv_proj,fc_in")  # another architecture's names
    model = meta_model(full_config("llava-next"), FAMILIES["llava-next"])
    with pytest.raises(ConfigError, match="DPO_LORA_TARGET_MODULES="):
        with_lora(model, lora_config(load_settings(), FAMILIES["llava-next"]))


def test_architecture_report_for_llava_next_7b():
    arch = describe(full_config("llava-next"), FAMILIES["llava-next"], lora_config(load_settings(),
                                                                                    FAMILIES["llava-next"]))
    assert (arch.hidden_size, arch.intermediate_size, arch.layers, arch.kv_size) == (4096, 14336, 32, 1024)
    assert arch.lora_params == 41_943_040 and arch.lora_modules == 224
    assert arch.vision_patches == 577  # (336 / 14)^2 patches + the class token
    assert 6.9e9 < arch.quantized < arch.params  # the decoder's linear layers; not the tower, embeddings, head


@pytest.mark.parametrize(("family", "shape", "lora"), [
    # hidden, MLP, layers, key/value width; LoRA r=16 on q, k, v, o, gate, up, down of every layer
    ("qwen2.5-vl", (3584, 18944, 28, 512), 40_370_176),
    ("qwen3-vl", (4096, 12288, 36, 1024), 43_646_976),
    ("gemma3", (2560, 10240, 34, 1024), 29_802_496),
])
def test_architecture_report_for_the_newer_families(family, shape, lora):
    arch = describe(full_config(family), FAMILIES[family], lora_config(load_settings(), FAMILIES[family]))
    assert (arch.hidden_size, arch.intermediate_size, arch.layers, arch.kv_size) == shape
    assert arch.lora_params == lora and arch.lora_modules == 7 * shape[2]
    # Qwen's towers have no image size: the processor's pixel budget sizes them (plan.py); Gemma 3's SigLIP sees
    # 896 / 14 = 64 x 64 patches
    assert arch.vision_patches == (0 if family.startswith("qwen") else 64 * 64 + 1)


# The chat templates kept as files, checked against the digests of the checkpoints' own (published.py names them).
TEMPLATES = {"qwen2.5-vl": (1017, "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"),
             "qwen3-vl": (5292, "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"),
             "gemma3": (1532, "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4")}


@pytest.mark.parametrize("family", TEMPLATES)
def test_chat_templates_are_the_checkpoints_byte_for_byte(family):
    data = PUBLISHED[family].chat_template.encode()
    assert (len(data), hashlib.sha256(data).hexdigest()) == TEMPLATES[family]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def shapes(request, tmp_path_factory):
    family = request.param
    return family, build_shapes(family, tmp_path_factory.mktemp("shapes") / family)


def _tree(model) -> set[str]:
    """Module names with layer numbers folded: the same for 2 layers and for 32."""
    return {re.sub(r"\.\d+(?=\.|$)", ".N", name) for name, _ in model.named_modules()}


def test_shapes_model_keeps_the_published_processor_files_verbatim(shapes):
    family, path = shapes
    published = PUBLISHED[family]
    if published.image_processor is None:
        assert not (path / "preprocessor_config.json").exists()
        return
    assert json.loads((path / "preprocessor_config.json").read_text()) == published.image_processor
    if published.processor is None:  # Qwen's: the processor is named in preprocessor_config.json
        assert not (path / "processor_config.json").exists()
    else:
        assert json.loads((path / "processor_config.json").read_text()) == published.processor
    assert (path / "chat_template.jinja").read_text() == published.chat_template


def test_shapes_model_has_the_published_geometry_and_module_tree_at_narrow_width(shapes):
    import transformers

    family, path = shapes
    config = transformers.AutoConfig.from_pretrained(path)
    published = full_config(family)
    for key in ("image_grid_pinpoints", "vision_feature_layer", "vision_feature_select_strategy",
                "use_image_newline_parameter", "projector_hidden_act"):
        assert getattr(config, key, None) == getattr(published, key, None), key
    if hasattr(published, "vision_config"):
        for key in ("image_size", "patch_size", "model_type", "spatial_merge_size", "temporal_patch_size"):
            assert getattr(config.vision_config, key, None) == getattr(published.vision_config, key, None), key
    for key in ("mm_tokens_per_image",):  # Gemma 3: 256 tokens an image
        assert getattr(config, key, None) == getattr(published, key, None), key
    if hasattr(published, "perceiver_config"):  # 64 latents: Idefics2's tokens an image
        assert config.perceiver_config.resampler_n_latents == published.perceiver_config.resampler_n_latents == 64
    text = config.get_text_config()
    assert text.hidden_size == 64 and text.num_hidden_layers == 2 and text.model_type == \
        published.get_text_config().model_type
    model_class = getattr(transformers, FAMILIES[family].model_class)
    narrow = model_class.from_pretrained(path)
    assert _tree(narrow) == _tree(meta_model(published, FAMILIES[family]))
    assert sum(p.numel() for p in narrow.parameters()) < 3_000_000
