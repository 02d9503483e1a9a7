"""Model families: what differs between LLaVA-NeXT, LLaVA 1.5, Idefics2, Qwen2.5-VL, Qwen3-VL, Gemma 3 and
text-only causal LMs.

A new family is one `Family` entry, plus its published configuration in `published.py` (from which
`shapes.py` builds its offline model) and a tiny builder in `tiny.py` for the fast tests.
The module names are those of transformers 5's classes (`model.vision_tower`, ...); tests build each
published architecture on the meta device and check every name here matches real modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from entrypoint.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values that belong to it
    model_class: str  # transformers class that loads it
    vision: bool
    vision_modules: tuple[str, ...]  # kept in full precision, and out of LoRA unless DPO_LORA_VISION=1
    description: str
    # How an image becomes tokens, which decides what DPO_MAX_IMAGE_TILES and DPO_IMAGE_MAX_PIXELS do
    # (models/image_tokens.py): "anyres" (a base image plus grid tiles), "split" (4 crops plus the whole image,
    # or the whole image alone), "fixed" (one image, one token count), "dynamic" (the image at its own size,
    # within a pixel budget: one token per 28 x 28 or 32 x 32 pixels), "pan-and-scan" (one fixed-size image,
    # plus crops of wide or tall images when pan-and-scan is on), "none" (text only).
    tiling: str = "none"
    # Images one pair may hold: None for any number (Idefics2 interleaves them), 0 for text-only models.
    # Rows with more are skipped and counted ("2 images in one row").
    images_per_pair: int | None = 1
    # The projector (merger, connector) between the vision tower and the language model: the part of
    # `vision_modules` that DPO_TRAIN_PROJECTOR trains fully (PEFT modules_to_save) while the tower stays frozen.
    projector_modules: tuple[str, ...] = ()
    # The job's own processor class (models/processors.py) where AutoProcessor would load more than the job uses:
    # Qwen's processors bring a video processor that needs torchvision, which the image does not install.
    image_only_processor: str | None = None

    @property
    def image_tokens_fixed(self) -> bool:
        """Whether every image costs the same tokens whatever its size (one fixed tile, or fixed crops)."""
        return self.tiling in ("fixed", "split")

    @property
    def keep_full_precision(self) -> list[str]:
        """bitsandbytes matches these from the start of a module name; lm_head is never quantized."""
        return [*self.vision_modules, "lm_head"]

    @property
    def lora_exclude_pattern(self) -> str | None:
        """PEFT regex (full match) for modules LoRA must leave alone."""
        if not self.vision_modules:
            return None
        names = "|".join(m.split(".")[-1] for m in self.vision_modules)
        return rf".*({names}).*"


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llava-next", ("llava_next",), "LlavaNextForConditionalGeneration", True,
               ("model.vision_tower", "model.multi_modal_projector"),
               "LLaVA-NeXT (v1.6), e.g. llava-hf/llava-v1.6-mistral-7b-hf", "anyres",
               projector_modules=("model.multi_modal_projector",)),
        Family("llava", ("llava",), "LlavaForConditionalGeneration", True,
               ("model.vision_tower", "model.multi_modal_projector"),
               "LLaVA 1.5, e.g. llava-hf/llava-1.5-7b-hf", "fixed", projector_modules=("model.multi_modal_projector",)),
        Family("idefics2", ("idefics2",), "Idefics2ForConditionalGeneration", True,
               ("model.vision_model", "model.connector"),
               "Idefics2, e.g. HuggingFaceM4/idefics2-8b", "split", images_per_pair=None,
               projector_modules=("model.connector",)),
        # The vision tower holds its merger (the projector); Qwen3-VL's also has the DeepStack mergers that feed
        # three tower layers' features into the first decoder layers.
        Family("qwen2.5-vl", ("qwen2_5_vl",), "Qwen2_5_VLForConditionalGeneration", True, ("model.visual",),
               "Qwen2.5-VL, e.g. Qwen/Qwen2.5-VL-7B-Instruct", "dynamic", images_per_pair=None,
               projector_modules=("model.visual.merger",), image_only_processor="Qwen2_5_VLProcessor"),
        Family("qwen3-vl", ("qwen3_vl",), "Qwen3VLForConditionalGeneration", True, ("model.visual",),
               "Qwen3-VL, e.g. Qwen/Qwen3-VL-8B-Instruct", "dynamic", images_per_pair=None,
               projector_modules=("model.visual.merger", "model.visual.deepstack_merger_list"),
               image_only_processor="Qwen3VLProcessor"),
        Family("gemma3", ("gemma3",), "Gemma3ForConditionalGeneration", True,
               ("model.vision_tower", "model.multi_modal_projector"),
               "Gemma 3, e.g. google/gemma-3-4b-it", "pan-and-scan", images_per_pair=None,
               projector_modules=("model.multi_modal_projector",)),
        Family("causal-lm", (), "AutoModelForCausalLM", False, (),
               "any text-only causal LM, e.g. mistralai/Mistral-7B-Instruct-v0.2", images_per_pair=0),
    )
}


# config.json keys that only vision-language models have: such a model of an unknown type must not
# silently train as a text-only causal LM.
_VISION_KEYS = ("vision_config", "image_token_index", "image_token_id", "vision_start_token_id", "mm_vision_tower")


def family_for_config(config: dict) -> Family:
    """The family of a model's config.json; an unknown vision-language model is a ConfigError."""
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    if any(key in config for key in _VISION_KEYS):
        supported = ", ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES.values() if f.vision)
        raise ConfigError(f"model type {model_type!r} is a vision-language model of a family this job does not "
                          f"support; supported vision families: {supported}")
    return FAMILIES["causal-lm"]


def family_from_config(config_path: Path) -> Family:
    """The family named by a model's config.json, read as plain JSON (no transformers import)."""
    try:
        config = json.loads(config_path.read_text())
        config["model_type"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{config_path}: not a readable model config ({exc})") from None
    return family_for_config(config)
