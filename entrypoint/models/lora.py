"""The LoRA recipe: which modules get adapters, which are trained in full, from the settings and the family."""

from __future__ import annotations

from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.models.families import Family


def lora_config(settings: JobSettings, family: Family) -> Any:
    """LoRA on the language model's linear layers; the vision side only when DPO_LORA_VISION=1.

    DPO_TRAIN_PROJECTOR=1: the projector is trained in full as PEFT `modules_to_save` (PEFT wraps every module
    whose name ends with one of them, trains a copy, saves it in the adapter and keeps LoRA off it), while the
    vision tower stays frozen (out of LoRA too, unless DPO_LORA_VISION=1)."""
    from peft import LoraConfig

    targets = settings.lora_target_modules
    target_modules: str | list[str] = targets if targets == "all-linear" else [
        t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=target_modules, task_type="CAUSAL_LM",
                      exclude_modules=None if settings.lora_vision else family.lora_exclude_pattern,
                      modules_to_save=list(family.projector_modules) if settings.train_projector else None)


def place_modules_to_save(model: Any, config: Any) -> Any:
    """`config.modules_to_save` made to fit `model`: a container (Qwen3-VL's DeepStack mergers are a ModuleList,
    which PEFT refuses to wrap) is named by its children, each trained in full. Returns `config`."""
    import torch

    if not getattr(config, "modules_to_save", None):
        return config
    modules = dict(model.named_modules())
    names: list[str] = []
    for name in config.modules_to_save:
        module = modules.get(name)
        if isinstance(module, torch.nn.ModuleList | torch.nn.ModuleDict):
            names += [f"{name}.{child}" for child, _ in module.named_children()]
        else:
            names.append(name)
    config.modules_to_save = names
    return config
