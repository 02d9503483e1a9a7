"""TRL's DPOTrainer, wired from the settings: DPOConfig, LoRA config, k-bit preparation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrypoint.models.families import Family
from entrypoint.settings import JobSettings, trainer_overrides


def lora_config(settings: JobSettings, family: Family) -> Any:
    """LoRA on the language model's linear layers; the vision side only when DPO_LORA_VISION=1."""
    from peft import LoraConfig

    targets = settings.lora_target_modules
    target_modules: str | list[str] = targets if targets == "all-linear" else [
        t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=target_modules, task_type="CAUSAL_LM",
                      exclude_modules=None if settings.lora_vision else family.lora_exclude_pattern)


def dpo_config(settings: JobSettings, checkpoint_dir: Path, run_name: str) -> Any:
    """DPOConfig from every DPO_<FIELD> set, plus precision picked from the hardware unless set."""
    import torch
    from trl import DPOConfig

    from entrypoint.models.loading import compute_dtype

    kwargs = trainer_overrides(settings)
    dtype = compute_dtype()
    kwargs.setdefault("bf16", dtype == torch.bfloat16)
    kwargs.setdefault("fp16", dtype == torch.float16)
    kwargs.setdefault("use_cpu", not torch.cuda.is_available())
    return DPOConfig(output_dir=str(checkpoint_dir), run_name=run_name, seed=settings.seed,
                     report_to=[] if settings.report_to == "none" else [settings.report_to], **kwargs)


def build_trainer(settings: JobSettings, model: Any, family: Family, processor: Any, train_dataset: Any,
                  eval_dataset: Any, args: Any, callbacks: list[Any] | None = None) -> Any:
    from peft import prepare_model_for_kbit_training
    from trl import DPOTrainer

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Norms and the unquantized modules to fp32, input grads on for checkpointing: the QLoRA recipe.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False})
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, processing_class=processor,
                      peft_config=lora_config(settings, family), callbacks=callbacks)
