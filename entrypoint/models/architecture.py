"""The model's full-size architecture on the meta device: parameter counts, module names, LoRA size.

Built from the model's own config.json (for a Hub id, the copy the pre-flight fetched: a few KB) with
the family's transformers class on PyTorch's meta device: every parameter has its real shape and no
storage, so a 7B model takes a fraction of a second and no memory. The memory plan counts from it,
PEFT's own matching places the LoRA adapters on it (a target list that matches nothing is refused
here, before any weights load), and the tests check the family registry's module names against the
published architectures built the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.models.families import Family
from entrypoint.models.lora import place_modules_to_save


@dataclass(frozen=True)
class Architecture:
    """What the memory plan needs to know about a model, counted on the real module tree."""

    params: int  # every parameter
    quantized: int  # parameters of the linear layers 4/8-bit loading quantizes
    lora_params: int  # trainable LoRA parameters at the run's settings
    lora_modules: int  # layers LoRA adapts
    hidden_size: int  # language model
    intermediate_size: int
    kv_size: int  # key/value width (grouped-query attention)
    layers: int
    vocab_size: int
    vision_hidden_size: int = 0
    vision_patches: int = 0  # patches (tokens) the vision tower sees per image tile or crop
    full_params: int = 0  # parameters trained in full (PEFT modules_to_save: DPO_TRAIN_PROJECTOR), beside LoRA's
    vision_params: int = 0  # the vision modules (tower and projector)
    decoder_params: int = 0  # the language model's matmul parameters: input embedding table out, LM head in
    attention_width: int = 0  # query heads x head dim


def build_model(config: Any, family: Family) -> Any:
    """The family's model class built from `config` (randomly initialised, on the current default device)."""
    import transformers

    model_class = getattr(transformers, family.model_class)
    if model_class is transformers.AutoModelForCausalLM:
        return model_class.from_config(config)
    return model_class._from_config(config)


def meta_model(config: Any, family: Family) -> Any:
    """The family's model built from `config` on the meta device (no weights, nothing allocated)."""
    import torch

    with torch.device("meta"):
        return build_model(config, family)


def load_config(config_path: Path, overrides: dict[str, Any] | None = None) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(config_path.parent, **(overrides or {}))


def with_lora(model: Any, lora_config: Any) -> Any:
    """PEFT's LoRA on `model`, placed by PEFT's own matching; a target list that matches nothing is a
    ConfigError (DPO_LORA_TARGET_MODULES), found here instead of after the weights are loaded."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, place_modules_to_save(model, lora_config))
    except ValueError as exc:
        raise ConfigError(f"DPO_LORA_TARGET_MODULES={lora_config.target_modules!r}: "
                          f"{str(exc).splitlines()[0]}") from None


def describe(config: Any, family: Family, lora_config: Any) -> Architecture:
    """Count parameters and LoRA on the full-size architecture of `config`."""
    import torch
    from transformers.quantizers.quantizers_utils import should_convert_module  # bitsandbytes' skip rule

    model = meta_model(config, family)
    quantized = sum(module.weight.numel() for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and should_convert_module(name, family.keep_full_precision))
    params = sum(p.numel() for p in model.parameters())
    vision_params = sum(p.numel() for name, p in model.named_parameters()
                        if any(name.startswith(m + ".") for m in family.vision_modules))
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings
    adapted = with_lora(model, lora_config)
    full_params = sum(p.numel() for name, p in adapted.named_parameters()
                      if p.requires_grad and ".modules_to_save." in name)
    lora_params = sum(p.numel() for p in adapted.parameters() if p.requires_grad) - full_params
    lora_modules = sum(1 for name, _ in adapted.named_modules() if name.endswith(".lora_A"))
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    vision = getattr(config, "vision_config", None)
    return Architecture(
        params=params, quantized=quantized, lora_params=lora_params, lora_modules=lora_modules,
        hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        kv_size=(getattr(text, "num_key_value_heads", None) or heads) * head_dim, layers=text.num_hidden_layers,
        vocab_size=text.vocab_size,
        vision_hidden_size=vision.hidden_size if vision else 0,
        # Qwen-VL towers have no image size: the processor's pixel budget decides (planning/memory.py asks
        # image_tokens.py)
        vision_patches=(vision.image_size // vision.patch_size) ** 2 + 1 if getattr(vision, "image_size", None) else 0,
        full_params=full_params, vision_params=vision_params,
        decoder_params=params - vision_params - (0 if tied else embeddings.numel()),
        attention_width=heads * head_dim)

