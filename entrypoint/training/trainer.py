"""TRL's DPOTrainer, wired from the settings: DPOConfig, LoRA config, k-bit preparation.

Importing this module imports TRL (and torch): the job does so once the settings are known to be good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trl import DPOConfig, DPOTrainer

from entrypoint.config.settings import JobSettings, trainer_overrides
from entrypoint.errors import ConfigError
from entrypoint.logs import progress_is_a_bar
from entrypoint.models.encode_once import encode_images_once
from entrypoint.models.families import Family
from entrypoint.models.loading import compute_dtype
from entrypoint.models.lora import lora_config, place_modules_to_save


def check_trained_modules(settings: JobSettings, family: Family) -> None:
    """DPO_TRAIN_PROJECTOR needs a family with a projector: found before any model is loaded."""
    if settings.train_projector and not family.vision:
        raise ConfigError(f"DPO_TRAIN_PROJECTOR=true: {family.name} is a text-only model family; it has no "
                          "projector to train (unset it)")
    if settings.train_projector and not family.projector_modules:
        raise ConfigError(f"DPO_TRAIN_PROJECTOR=true: the {family.name} family names no projector modules "
                          "(Family.projector_modules); it cannot be trained in full yet")


def dpo_config(settings: JobSettings, checkpoint_dir: Path, run_name: str) -> DPOConfig:
    """DPOConfig from every DPO_<FIELD> set, plus precision picked from the hardware unless set."""
    import torch

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
_NOT_FOR_VISION = {
    "truncation_mode": ("keep_end", "image tokens sit in the prompt, which keep_end cuts; use keep_start"),
    "precompute_ref_log_probs": (True, "not supported for vision data; leave it false"),
    "padding_free": (True, "TRL turns it off for vision data; leave it false"),
}


def check_vision_args(args: DPOConfig, family: Family) -> None:
    """The DPOConfig combinations TRL refuses for vision models fail here, before any model is loaded."""
    if not family.vision:
        return
    for name, (value, fix) in _NOT_FOR_VISION.items():
        if getattr(args, name) == value:
            raise ConfigError(f"DPO_{name.upper()}={value}: {fix} ({family.name} is a vision-language model)")
    if args.pad_to_multiple_of is not None:
        raise ConfigError("DPO_PAD_TO_MULTIPLE_OF: TRL's vision collator cannot pad to a multiple; unset it")


class ResumableDPOTrainer(DPOTrainer):
    """DPOTrainer whose resume restores the adapter exactly as it was trained, and that writes no model card.

    For QLoRA, TRL keeps the LoRA weights in bf16, but on resume transformers reloads them
    with PEFT's `load_adapter`, which upcasts them to fp32: training would go on in another
    precision and drift from an uninterrupted run. Each trainable weight gets its dtype back.
    """

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Writes nothing. TRL writes its model card beside the checkpoints at every save, reading the tracker's
        run URL (wandb warns at each save of an offline run that it has none); the job's own card goes into
        adapter/ (results/card.py), and nothing reads TRL's."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = model if model is not None else self.model
        dtypes = {name: p.dtype for name, p in target.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])


def build_trainer(settings: JobSettings, model: Any, family: Family, processor: Any, train_dataset: Any,
                  eval_dataset: Any, args: DPOConfig, callbacks: list[Any] | None = None) -> ResumableDPOTrainer:
    """The trainer on the loaded model: k-bit preparation for a quantized base, LoRA (and the modules trained in
    full), images encoded once a step unless DPO_ENCODE_IMAGES_ONCE=false."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Norms and the unquantized modules to fp32, input grads on for checkpointing: the QLoRA recipe.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False})
    trainer = ResumableDPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                                  eval_dataset=eval_dataset, processing_class=processor,
                                  peft_config=place_modules_to_save(model, lora_config(settings, family)),
                                  callbacks=callbacks)
    keep_full_modules_in_fp32(trainer.model)
    if family.vision and settings.encode_images_once:
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
