"""TRL's DPOTrainer, wired from the settings: DPOConfig, LoRA config, k-bit preparation, the adapter saved and checked.

Importing this module imports TRL (and torch): the job does so once the settings are known to be good.
"""

from __future__ import annotations

import copy
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
    shape of the batch it works on (`batch_shape`, for an out-of-memory message), the adapter saved whole and checked
    (`save_adapter`), and no model card of TRL's."""

    batch_shape: tuple[int, ...] | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        keep_trained_weights_in_fp32(self.model)
        # Read now: once FSDP wraps the model, its parameters are flat shards and its modules' names change.
        self.adapter_keys = adapter_keys(self.model)
        state = self.model.state_dict()
        self.adapter_weights = {saved: tuple(state[key].shape) for saved, key in self.adapter_keys.items()}

    def wrap_for_ranks(self) -> None:
        """Several processes: wrap the model for them now (DDP; FSDP with PEFT's wrap policy), before anything
        evaluates it. transformers' evaluation prepares an unwrapped model for evaluation only and marks it prepared,
        so a `trainer.evaluate()` before `train()` (the job's evaluation at step 0) left DDP unwrapped for training:
        every rank then trained alone on its share, with no gradient all-reduce, and only rank 0's adapter was kept
        (tests/test_multinode.py compares the ranks' weights). `train()` uses a model wrapped already as it is
        (transformers' Trainer: "if the model is wrapped, don't use accelerator.prepare")."""
        from accelerate.utils import DistributedType

        if self.accelerator.num_processes == 1:
            return
        if self.is_fsdp_enabled:  # what train() would do (transformers' update_fsdp_plugin_peft), done first
            from transformers.integrations.fsdp import update_fsdp_plugin_peft

            update_fsdp_plugin_peft(self.model, self.accelerator)
            self.model = self.model_wrapped = self.accelerator.prepare(self.model)
        elif self.accelerator.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
            self.model_wrapped = self.accelerator.prepare_model(self.model)

    def save_adapter(self, directory: Path) -> None:
        """The trained adapter into `directory`, called on every rank (sharded strategies gather the weights); rank 0
        then checks that the file holds every trained weight (`check_adapter`), before any card or manifest says so.

        Under FSDP two things in the libraries lose the weights. With the checkpoints' `SHARDED_STATE_DICT`
        (accelerate_configs/fsdp_qlora.yaml: each rank writes its own shard) `Trainer.save_model` writes no adapter
        at all; PEFT's FSDP recipe gathers the full state dict on rank 0 instead, as here. And PEFT 0.21 picks the
        adapter's entries from that state dict by the names of its modules, which inside FSDP's nested units carry
        `_fsdp_wrapped_module.` (it strips the prefix of the outer unit only): its file would hold no weights. So
        rank 0 picks them by the names read before FSDP wrapped the model (`adapter_keys`) and writes the files
        `Trainer.save_model` writes."""
        if not self.is_fsdp_enabled:
            self.save_model(str(directory))
        else:
            state = self.accelerator.get_state_dict(self.model)  # every rank: FSDP gathers the full state on rank 0
            if self.args.should_save:
                self._write_adapter(Path(directory), state)
        if self.args.should_save:
            check_adapter(Path(directory), self.adapter_weights)

    def _write_adapter(self, directory: Path, state: dict[str, Any]) -> None:
        """What `Trainer.save_model` writes for a PEFT model (PEFT's weights and config, the processor, the training
        arguments), the weights taken from `state` (the model's full state dict) by `adapter_keys`."""
        import torch
        from safetensors.torch import save_file

        model = self.accelerator.unwrap_model(self.model)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({saved: state[key].contiguous() for saved, key in self.adapter_keys.items()},
                  str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = copy.deepcopy(model.peft_config[model.active_adapter])
        config.inference_mode = True  # as PeftModel.save_pretrained saves it
        config.save_pretrained(str(directory))
        self.processing_class.save_pretrained(str(directory))
        torch.save(self.args, directory / "training_args.bin")

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.batch_shape = tuple(inputs["input_ids"].shape)  # (sequences, tokens): named if the GPU runs out
        return super().compute_loss(model, inputs, *args, **kwargs)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Writes nothing. TRL writes its model card beside the checkpoints at every save, reading the tracker's
        run URL (wandb warns at each save of an offline run that it has none); the job's own card goes into
        adapter/ (results/card.py), and nothing reads TRL's."""


def build_trainer(settings: JobSettings, model: Any, family: Family, processor: Any, train_dataset: Any,
                  eval_dataset: Any, args: DPOConfig, callbacks: list[Any] | None = None) -> JobDPOTrainer:
    """The trainer on the loaded model: k-bit preparation for a quantized base (not under FSDP:
    `needs_kbit_preparation`), LoRA (and the modules trained in full), images encoded once a step unless
    DPO_ENCODE_IMAGES_ONCE=false."""
    from peft import PeftModel

    adapted = isinstance(model, PeftModel)  # policy_model's (on-policy rounds): TRL's reference is its adapter's copy
    if not adapted:
        model = _prepared(settings, model, args)
    trainer = JobDPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=processor,
                            peft_config=None if adapted else place_modules_to_save(model,
                                                                                   lora_config(settings, family)),
                            callbacks=callbacks)
    if family.vision and settings.encode_images_once:
        encode_images_once(trainer, family, sharded=settings.distributed == "fsdp")
    trainer.wrap_for_ranks()
    return trainer


def _prepared(settings: JobSettings, model: Any, args: DPOConfig) -> Any:
    from peft import prepare_model_for_kbit_training

    if needs_kbit_preparation(model, settings.distributed):
        # Norms and the unquantized modules to fp32, input grads on for checkpointing: the QLoRA recipe.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False})
    return model


def policy_model(settings: JobSettings, model: Any, family: Family, args: DPOConfig) -> Any:
    """The loaded base prepared as build_trainer prepares it, with the job's LoRA on it (trained weights in fp32): a
    policy to sample from before its trainer exists (on-policy rounds, onpolicy/rounds.py). A trainer built on it
    uses, as TRL does for a PeftModel, a frozen copy of its adapter as the DPO reference: the policy the round
    starts from, as in RLAIF-V's rounds."""
    from peft import get_peft_model

    model = _prepared(settings, model, args)
    policy = get_peft_model(model, place_modules_to_save(model, lora_config(settings, family)))
    keep_trained_weights_in_fp32(policy)
    return policy


def use_base_as_reference(model: Any) -> None:
    """DPO_ROUND_REFERENCE=base: TRL's frozen "ref" adapter (the copy of the policy it starts from) made the base
    model's equal: LoRA's B zero, so the ref adapter's update B·A is zero, and every module PEFT trains in full
    (modules_to_save) back to the base module's weights."""
    import torch

    model = getattr(model, "module", model)  # under DDP
    with torch.no_grad():
        for module in model.modules():
            for part in ("lora_B", "lora_embedding_B"):
                table = getattr(module, part, None)
                if table is not None and "ref" in table:
                    ref = table["ref"]
                    (ref.weight if hasattr(ref, "weight") else ref).zero_()
            copies = getattr(module, "modules_to_save", None)
            if copies is not None and "ref" in copies and hasattr(module, "original_module"):
                copies["ref"].load_state_dict(module.original_module.state_dict())


def needs_kbit_preparation(model: Any, distributed: str) -> bool:
    """PEFT's k-bit preparation for a quantized base, except under FSDP (DPO_DISTRIBUTED=fsdp), as TRL's sharded
    QLoRA recipe skips it.

    FSDP1 flattens each wrapped unit (a decoder layer, each trainable LoRA matrix: peft's `fsdp_auto_wrap_policy`,
    which the Trainer applies to a PEFT model) into one tensor of one dtype. The preparation upcasts a layer's norms
    to fp32 beside its 4-bit weights, stored in bf16 (`bnb_4bit_quant_storage`, models/loading.py), and FSDP
    refuses the layer ("Must flatten tensors with uniform dtype"). Without it every frozen weight keeps the load
    dtype; what the preparation did besides is done anyway: PEFT freezes the base, TRL turns input gradients on for
    gradient checkpointing and the Trainer turns checkpointing on. The trained weights are fp32 either way
    (`keep_trained_weights_in_fp32`), each LoRA matrix its own FSDP unit; FSDP's mixed precision computes in bf16."""
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    return quantized and distributed != "fsdp"


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_keys(model: Any) -> dict[str, str]:
    """{name in adapter_model.safetensors: key in the model's state dict} for the weights PEFT saves for `model` (a
    PeftModel, not yet wrapped by FSDP): PEFT's own choice and naming (`...lora_A.default.weight` saved as
    `...lora_A.weight`), run on the keys alone."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict={key: key for key in model.state_dict()})


def check_adapter(directory: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """RuntimeError unless `directory`'s adapter_model.safetensors holds exactly the `expected` weights, each of its
    shape and none empty: a run must not write a model card and a manifest for an adapter without weights."""
    from safetensors import safe_open

    path = directory / ADAPTER_WEIGHTS
    if not path.is_file():
        raise RuntimeError(f"the adapter was not saved: {path} does not exist, so the trained weights are lost; "
                           "with DPO_DISTRIBUTED=fsdp the adapter must be saved from FSDP's full state dict "
                           "(JobDPOTrainer.save_adapter)")
    with safe_open(str(path), framework="pt") as weights:
        saved = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    wrong = sorted(name for name in expected.keys() & saved.keys()
                   if saved[name] != expected[name] or 0 in saved[name])
    if not expected or missing or unexpected or wrong:
        problems = [f"{len(missing)} of the {len(expected)} trained weights missing (e.g. {missing[0]})"] if missing \
            else []
        problems += [f"{len(wrong)} empty or of the wrong shape (e.g. {wrong[0]}: {saved[wrong[0]]}, trained "
                     f"{expected[wrong[0]]})"] if wrong else []
        problems += [f"{len(unexpected)} not trained (e.g. {unexpected[0]})"] if unexpected else []
        problems += ["no trained weights to expect (the model has no adapter)"] if not expected else []
        raise RuntimeError(f"the saved adapter {path} is not the trained one: {'; '.join(problems)}. Under "
                           "DPO_DISTRIBUTED=fsdp the adapter must be saved from FSDP's full state dict "
                           "(JobDPOTrainer.save_adapter); nothing was written after it")


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
