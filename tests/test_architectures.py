"""The published architectures, built full size on the meta device, against the family registry; and the
`shapes:` models against them: same processor files, same geometry, same module tree, narrow widths."""

from __future__ import annotations

import json
import re

import pytest
import torch

from entrypoint.errors import ConfigError
from entrypoint.models.architecture import describe, meta_model, with_lora
from entrypoint.models.families import FAMILIES
from entrypoint.models.published import PUBLISHED, full_config
from entrypoint.models.shapes import build_shapes
from entrypoint.settings import load_settings
from entrypoint.train import lora_config

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


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_default_lora_adapts_exactly_the_language_model_linear_layers(family):
    model = meta_model(full_config(family), FAMILIES[family])  # its own: PEFT wraps the model in place
    linears = _linears(model)
    adapted = with_lora(model, lora_config(load_settings(), FAMILIES[family]))
    wrapped = {name.removeprefix("base_model.model.").removesuffix(".lora_A") for name, _ in adapted.named_modules()
               if name.endswith(".lora_A")}
    text = full_config(family).get_text_config()
    assert len(wrapped) == 7 * text.num_hidden_layers  # q, k, v, o, gate, up, down in every layer
    assert not any(part in name for name in wrapped for part in ("vision", "projector", "connector", "lm_head"))
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
    assert arch.vision_patches == 577 and arch.vision_states_kept == 25  # 24 layers + embeddings, for layer -2
    assert 6.9e9 < arch.quantized < arch.params  # the decoder's linear layers; not the tower, embeddings, head


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
        for key in ("image_size", "patch_size", "model_type"):
            assert getattr(config.vision_config, key) == getattr(published.vision_config, key), key
    if hasattr(published, "perceiver_config"):  # 64 latents: Idefics2's tokens an image
        assert config.perceiver_config.resampler_n_latents == published.perceiver_config.resampler_n_latents == 64
    text = config.get_text_config()
    assert text.hidden_size == 64 and text.num_hidden_layers == 2 and text.model_type == \
        published.get_text_config().model_type
    model_class = getattr(transformers, FAMILIES[family].model_class)
    narrow = model_class.from_pretrained(path)
    assert _tree(narrow) == _tree(meta_model(published, FAMILIES[family]))
    assert sum(p.numel() for p in narrow.parameters()) < 3_000_000
