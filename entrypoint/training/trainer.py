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


class JobDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer as the job runs it: every trained weight kept in fp32 (`keep_trained_weights_in_fp32`), the
    shape of the batch it works on (`batch_shape`, for an out-of-memory message), and no model card of TRL's."""

    batch_shape: tuple[int, ...] | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        keep_trained_weights_in_fp32(self.model)

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.batch_shape = tuple(inputs["input_ids"].shape)  # (sequences, tokens): named if the GPU runs out
        return super().compute_loss(model, inputs, *args, **kwargs)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Writes nothing. TRL writes its model card beside the checkpoints at every save, reading the tracker's
        run URL (wandb warns at each save of an offline run that it has none); the job's own card goes into
        adapter/ (results/card.py), and nothing reads TRL's."""


def build_trainer(settings: JobSettings, model: Any, family: Family, processor: Any, train_dataset: Any,
                  eval_dataset: Any, args: DPOConfig, callbacks: list[Any] | None = None) -> JobDPOTrainer:
    """The trainer on the loaded model: k-bit preparation for a quantized base, LoRA (and the modules trained in
    full), images encoded once a step unless DPO_ENCODE_IMAGES_ONCE=false."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Norms and the unquantized modules to fp32, input grads on for checkpointing: the QLoRA recipe.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False})
    trainer = JobDPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=processor,
                            peft_config=place_modules_to_save(model, lora_config(settings, family)),
                            callbacks=callbacks)
    if family.vision and settings.encode_images_once:
        encode_images_once(trainer, family)
    return trainer


def keep_trained_weights_in_fp32(model: Any) -> None:
    """Every trained weight in fp32: LoRA's matrices and the modules trained in full (DPO_TRAIN_PROJECTOR), as mixed
    precision keeps its master weights. Under autocast (bf16 on a GPU) the matmuls still run in bf16.

    For a quantized base TRL casts every trainable parameter to bf16, after the QLoRA paper's recipe. bf16 keeps 8
    significant bits: near |x| = 1e-2 (lora_A at init: PEFT's kaiming bound 1/sqrt(hidden), 0.016 for a 4096-wide
    7B) its spacing is 2^-14 = 6.1e-5, and an update under half of that, 3.1e-5, rounds away. AdamW moves a
    weight by about the learning rate, 5e-6 in every recipe here: most of lora_A never changed, and lora_B, which
    starts at 0, stalled where the spacing passes 1e-5 (|x| ~ 1e-3). In fp32 (24 bits) the spacing at 1e-2 is 9e-10.
    Without autocast (fp32 compute on a CPU) a bf16 weight could not even take the fp32 features of the vision
    tower, which k-bit preparation upcast."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
