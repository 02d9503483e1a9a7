"""Model families: what differs between LLaVA-NeXT, LLaVA 1.5, Idefics2 and text-only causal LMs.

A new family is one `Family` entry (plus a tiny builder in `tiny.py` for its tests).
The module names are those of transformers 5's classes (`model.vision_tower`, ...).
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
               "LLaVA-NeXT (v1.6), e.g. llava-hf/llava-v1.6-mistral-7b-hf"),
        Family("llava", ("llava",), "LlavaForConditionalGeneration", True,
               ("model.vision_tower", "model.multi_modal_projector"),
               "LLaVA 1.5, e.g. llava-hf/llava-1.5-7b-hf"),
        Family("idefics2", ("idefics2",), "Idefics2ForConditionalGeneration", True,
               ("model.vision_model", "model.connector"),
               "Idefics2, e.g. HuggingFaceM4/idefics2-8b"),
        Family("causal-lm", (), "AutoModelForCausalLM", False, (),
               "any text-only causal LM, e.g. mistralai/Mistral-7B-Instruct-v0.2"),
    )
}


def family_for_model_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    return FAMILIES["causal-lm"]


def family_from_config(config_path: Path) -> Family:
    """The family named by a model's config.json, read as plain JSON (no transformers import)."""
    try:
        model_type = json.loads(config_path.read_text())["model_type"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{config_path}: not a readable model config ({exc})") from None
    return family_for_model_type(model_type)
