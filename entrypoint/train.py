"""TRL's DPOTrainer, wired from the settings: DPOConfig, LoRA config, k-bit preparation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.models.families import Family
from entrypoint.settings import JobSettings, trainer_overrides


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


def check_trained_modules(settings: JobSettings, family: Family) -> None:
    """DPO_TRAIN_PROJECTOR needs a family with a projector: found before any model is loaded."""
    if settings.train_projector and not family.vision:
        raise ConfigError(f"DPO_TRAIN_PROJECTOR=true: {family.name} is a text-only model family; it has no "
                          "projector to train (unset it)")
    if settings.train_projector and not family.projector_modules:
        raise ConfigError(f"DPO_TRAIN_PROJECTOR=true: the {family.name} family names no projector modules "
                          "(Family.projector_modules); it cannot be trained in full yet")


def dpo_config(settings: JobSettings, checkpoint_dir: Path, run_name: str) -> Any:
    """DPOConfig from every DPO_<FIELD> set, plus precision picked from the hardware unless set."""
    import torch
    from trl import DPOConfig

    from entrypoint.logs import progress_is_a_bar
    from entrypoint.models.loading import compute_dtype

    kwargs = trainer_overrides(settings)
    kwargs.pop("save_total_limit", None)  # pruning is checkpoints.prune's: it knows complete from half-written
    # transformers 5 renamed gradient checkpointing to activation checkpointing and warns when the old name
    # decides (TRL's default sets it). DPO_GRADIENT_CHECKPOINTING[_KWARGS] still work: they give the new name its
    # value unless DPO_ACTIVATION_CHECKPOINTING[_KWARGS] is set (as transformers resolves them); the old names
    # then mirror the new ones (args.gradient_checkpointing is still read).
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        kwargs.pop(old, None)
        if kwargs.get(new) is None:
            kwargs[new] = getattr(settings, old)
    dtype = compute_dtype()
    kwargs.setdefault("bf16", dtype == torch.bfloat16)
    kwargs.setdefault("fp16", dtype == torch.float16)
    kwargs.setdefault("use_cpu", not torch.cuda.is_available())
    kwargs.setdefault("disable_tqdm", not progress_is_a_bar())  # plain log lines in cloud logs
    return DPOConfig(output_dir=str(checkpoint_dir), run_name=run_name, seed=settings.seed,
                     report_to=[] if settings.report_to == "none" else [settings.report_to], **kwargs)


# DPOConfig values TRL refuses (or silently ignores) for vision-language data, with the fix.
def optimizer_steps(config: Any, train_pairs: int, world_size: int = 1) -> int:
    """Optimizer steps of a run as the Trainer counts them, from a DPOConfig or the job's settings (the same field
    names): DPO_MAX_STEPS when set, else the epochs over the batches each process gets, a short last batch and a
    short last accumulation counting as one."""
    if config.max_steps and config.max_steps > 0:
        return int(config.max_steps)
    batches = math.ceil(train_pairs / (config.per_device_train_batch_size * world_size))
    per_epoch = max(math.ceil(batches / config.gradient_accumulation_steps), 1)
    return math.ceil(config.num_train_epochs * per_epoch)


_NOT_FOR_VISION = {
    "truncation_mode": ("keep_end", "image tokens sit in the prompt, which keep_end cuts; use keep_start"),
    "precompute_ref_log_probs": (True, "not supported for vision data; leave it false"),
    "padding_free": (True, "TRL turns it off for vision data; leave it false"),
}


def check_vision_args(args: Any, family: Family) -> None:
    """The DPOConfig combinations TRL refuses for vision models fail here, before any model is loaded."""
    if not family.vision:
        return
    for name, (value, fix) in _NOT_FOR_VISION.items():
        if getattr(args, name) == value:
            raise ConfigError(f"DPO_{name.upper()}={value}: {fix} ({family.name} is a vision-language model)")
    if args.pad_to_multiple_of is not None:
        raise ConfigError("DPO_PAD_TO_MULTIPLE_OF: TRL's vision collator cannot pad to a multiple; unset it")


def _trainer_class() -> type:
    from trl import DPOTrainer

    class ResumableDPOTrainer(DPOTrainer):
        """DPOTrainer whose resume restores the adapter exactly as it was trained, and that writes no model card.

        For QLoRA, TRL keeps the LoRA weights in bf16, but on resume transformers reloads them
        with PEFT's `load_adapter`, which upcasts them to fp32: training would go on in another
        precision and drift from an uninterrupted run. Each trainable weight gets its dtype back.
        """

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            """Writes nothing. TRL writes its model card beside the checkpoints at every save, reading the tracker's
            run URL (wandb warns at each save of an offline run that it has none); the job's own card goes into
            adapter/ (card.py), and nothing reads TRL's."""

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            target = model if model is not None else self.model
            dtypes = {name: p.dtype for name, p in target.named_parameters() if p.requires_grad}
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            for name, param in target.named_parameters():
                if name in dtypes and param.dtype != dtypes[name]:
                    param.data = param.data.to(dtypes[name])

    return ResumableDPOTrainer


def build_trainer(settings: JobSettings, model: Any, family: Family, processor: Any, train_dataset: Any,
                  eval_dataset: Any, args: Any, callbacks: list[Any] | None = None) -> Any:
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Norms and the unquantized modules to fp32, input grads on for checkpointing: the QLoRA recipe.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False})
    trainer = _trainer_class()(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, processing_class=processor,
                               peft_config=place_modules_to_save(model, lora_config(settings, family)),
                               callbacks=callbacks)
    keep_full_modules_in_fp32(trainer.model)
    if family.vision and settings.encode_images_once:
        from entrypoint.models.encode_once import encode_images_once

        encode_images_once(trainer, family)
    return trainer


def keep_full_modules_in_fp32(model: Any) -> None:
    """Modules trained in full (DPO_TRAIN_PROJECTOR) keep fp32 weights, as mixed precision's master weights do.

    For a quantized base TRL casts every trainable parameter to bf16 (QLoRA's recipe for the LoRA matrices).
    A fully trained layer in bf16 loses its updates (an AdamW step, about the learning rate: 5e-6 by default, on
    a weight of ~0.02 is under bf16's resolution, 2^-8 relative) and, without autocast (fp32 compute on a CPU),
    cannot even take the fp32 features of the vision tower, which k-bit preparation upcast. Under autocast
    (bf16 on a GPU) the matmuls still run in bf16."""
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and ".modules_to_save." in name and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
