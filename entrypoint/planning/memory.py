"""The memory plan: the peak GPU memory a run needs on each device, known before a GPU is rented.

    peak = weights + LoRA and optimizer state + activations (+ the CUDA context)

Every part is counted on the model's real architecture (built on the meta device, architecture.py)
and follows what the code does to memory, line by line:

- weights: the quantized linear layers as nf4 with double quantization (4 bits, plus an 8-bit absmax
  per 64 weights, plus an fp32 per 256 absmax) or LLM.int8 (1 byte); every other parameter (vision
  tower, projector, embeddings, lm_head, norms) in fp32, because peft's
  prepare_model_for_kbit_training upcasts them; without quantization, all in the compute dtype.
- LoRA and optimizer: TRL casts QLoRA adapters to bf16 (fp32 otherwise); the gradients and AdamW's
  two moments take the same dtype. Modules trained in full (DPO_TRAIN_PROJECTOR) are a second copy of
  their weights, kept in fp32 (training/trainer.py, keep_full_modules_in_fp32), with fp32 gradients and moments.
- activations, for one micro-batch of T = 2 x batch x length tokens (DPO runs the chosen and the
  rejected sequence of every pair together), the reference pass being freed before the policy's:
  with gradient checkpointing each decoder layer keeps its input, and one layer at a time is
  recomputed for its backward (its saved tensors plus the gradients in flight); without it, every
  layer keeps its saved tensors. The LM head is TRL's fused one, over completion tokens only. The
  frozen vision tower runs without grad: transient, its hidden states all kept for the feature layer.
- the CUDA context and the allocator's slack: a fixed 1 GiB plus 5%.
- DPO_MERGE=1, after training (its memory freed first): the base model dequantized to bf16, 2 bytes a
  parameter, merged in place (`merge_gib`).

The plan assumes bf16 compute (every GPU the YAMLs rent has it) and each device holding the whole
model (DDP). `bench/bench_gpu.py` prints it next to the measured peak.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.errors import ConfigError
from entrypoint.models.architecture import Architecture, load_config
from entrypoint.models.architecture import describe as describe_architecture
from entrypoint.models.image_tokens import (
    fewer_tokens_hint,
    image_budget,
    model_overrides,
    patches_per_image,
    tiles_per_image,
)
from entrypoint.models.loading import ModelRef, config_path
from entrypoint.models.lora import lora_config
from entrypoint.models.published import full_config

log = logging.getLogger("entrypoint")

GIB = 2**30
ACT = 2  # bytes per activation in bf16
FP32 = 4
CONTEXT_GIB = 1.0  # CUDA context + cuBLAS workspace, outside torch's allocator
SLACK = 0.05  # allocator fragmentation
# What the cloud offers, by usable memory (GiB): the sky YAMLs' accelerators.
GPUS = {"24 GB (L4, A10G)": 22.0, "40 GB (A100-40GB)": 39.4, "80 GB (A100-80GB, H100)": 79.1}
_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, 8-bit absmax per 64, fp32 per 256 absmax


@dataclass(frozen=True)
class Workload:
    """What one training step on one device processes."""

    batch: int  # pairs per device per micro-batch
    length: int  # tokens of the longest sequence of a micro-batch (the batch is padded to it)
    answer_tokens: int  # tokens of the longer answer of a pair (the LM head runs over these)
    images_per_pair: int = 0
    tiles_per_image: int = 1  # crops the vision tower sees per image
    gradient_checkpointing: bool = True
    lora_dropout: float = 0.05


@dataclass(frozen=True)
class MemoryPlan:
    weights: float  # GiB
    adapter_and_optimizer: float
    activations: float
    total: float  # peak allocated by torch
    with_context: float  # what the device must hold
    workload: Workload

    def fits(self, usable_gib: float) -> bool:
        return self.with_context <= usable_gib

    def fitting_gpus(self) -> list[str]:
        return [name for name, usable in GPUS.items() if self.fits(usable)]


def _weights(arch: Architecture, quantization: str) -> float:
    other = arch.params - arch.quantized
    if quantization == "4bit":
        return arch.quantized * _NF4_BYTES + other * FP32
    if quantization == "8bit":
        return arch.quantized * 1.0 + other * FP32
    return arch.params * ACT


def _adapter_and_optimizer(arch: Architecture, quantization: str) -> float:
    dtype = ACT if quantization != "none" else FP32
    # weights, gradients, AdamW's exp_avg and exp_avg_sq
    return arch.lora_params * dtype * 4 + arch.full_params * FP32 * 4


def _layer_saved_per_token(arch: Architecture, dropout: bool) -> float:
    """Bytes one decoder layer saves for its backward, per token (Llama/Mistral-style layer)."""
    h, kv, inter = arch.hidden_size, arch.kv_size, arch.intermediate_size
    norms = 2 * (2 * FP32 * h + ACT * h)  # RMSNorm: fp32 input and normalised copy, bf16 output; twice
    attention = ACT * (h + 2 * kv) + ACT * (h + kv) + ACT * h  # q, k, v; rotated q, k; attention output
    mlp = 4 * ACT * inter  # gate, up, silu(gate), their product (down_proj's input)
    per_module = min(1.0, arch.lora_modules / (7 * arch.layers))  # share of the 7 linear layers adapted
    lora = per_module * (6 * (ACT + 1) * h + (ACT + 1) * inter) if dropout else 0.0  # dropout outputs + masks
    return norms + attention + mlp + lora


def _activations(arch: Architecture, work: Workload) -> float:
    tokens = 2 * work.batch * work.length
    layer = _layer_saved_per_token(arch, work.lora_dropout > 0)
    in_flight = ACT * (2 * arch.intermediate_size + 2 * arch.hidden_size)  # gradients during a layer's backward
    if work.gradient_checkpointing:
        decoder = tokens * (arch.layers * ACT * arch.hidden_size + layer + in_flight)
    else:
        decoder = tokens * (arch.layers * layer + in_flight)
    decoder += tokens * 4 * ACT * arch.hidden_size  # embeddings, merged image features, final norm
    completion = 2 * work.batch * work.answer_tokens
    lm_head = completion * arch.vocab_size * FP32 * 3  # fused head: a logits tile, its softmax and gradient
    images = 2 * work.batch * work.images_per_pair * work.tiles_per_image
    # fp32: the tower is upcast with the rest of the unquantized modules; 8: one layer's working set
    vision = images * arch.vision_patches * arch.vision_hidden_size * FP32 * (arch.vision_states_kept + 8)
    return max(decoder + lm_head, vision)


def plan_memory(arch: Architecture, quantization: str, work: Workload) -> MemoryPlan:
    weights = _weights(arch, quantization) / GIB
    adapter = _adapter_and_optimizer(arch, quantization) / GIB
    activations = _activations(arch, work) / GIB
    total = (weights + adapter + activations) * (1 + SLACK)
    return MemoryPlan(weights, adapter, activations, total, total + CONTEXT_GIB, work)


def merge_gib(arch: Architecture) -> float:
    """What DPO_MERGE's step holds on the GPU, with the CUDA context: the whole model in bf16."""
    return arch.params * ACT / GIB * (1 + SLACK) + CONTEXT_GIB


def reductions(arch: Architecture, quantization: str, plan: MemoryPlan, settings: Any,
               fewer_image_tokens: str | None) -> list[str]:
    """Settings that bring the plan down, each with the plan it gives (where it can be computed here)."""
    work, out = plan.workload, []
    if work.batch > 1:
        smaller = plan_memory(arch, quantization, replace(work, batch=1))
        out.append(f"DPO_PER_DEVICE_TRAIN_BATCH_SIZE=1 with DPO_GRADIENT_ACCUMULATION_STEPS="
                   f"{settings.gradient_accumulation_steps * work.batch} ({smaller.with_context:.1f} GiB)")
    if not work.gradient_checkpointing:
        checkpointed = plan_memory(arch, quantization, replace(work, gradient_checkpointing=True))
        out.append(f"DPO_GRADIENT_CHECKPOINTING=true ({checkpointed.with_context:.1f} GiB)")
    if quantization != "4bit":
        quantized = plan_memory(arch, "4bit", work)
        out.append(f"DPO_QUANTIZATION=4bit ({quantized.with_context:.1f} GiB)")
    if fewer_image_tokens:
        out.append(f"fewer tokens an image: {fewer_image_tokens}")
    out.append(f"a lower DPO_MAX_LENGTH (now {work.length} tokens for the longest pair)")
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def describe(plan: MemoryPlan, arch: Architecture, quantization: str, p95: MemoryPlan | None = None) -> list[str]:
    """The plan as log lines."""
    work = plan.workload
    fits = plan.fitting_gpus()
    lines = [
        f"memory plan per GPU ({_count(arch.params)} parameters, {quantization}, LoRA {_count(arch.lora_params)} "
        f"trainable in {arch.lora_modules} layers"
        f"{f', {_count(arch.full_params)} trained in full' if arch.full_params else ''}; "
        f"batch {work.batch} x {work.length} tokens, gradient checkpointing "
        f"{'on' if work.gradient_checkpointing else 'off'}):",
        f"  weights {plan.weights:.1f} GiB + LoRA and optimizer {plan.adapter_and_optimizer:.2f} GiB + activations "
        f"{plan.activations:.1f} GiB = {plan.total:.1f} GiB peak ({plan.with_context:.1f} GiB with the CUDA context)",
    ]
    if p95 is not None:
        lines.append(f"  at the p95 pair ({p95.workload.length} tokens): {p95.with_context:.1f} GiB")
    lines.append(f"  fits: {', '.join(fits) if fits else 'none of ' + ', '.join(GPUS)}")
    return lines


def as_dict(plan: MemoryPlan) -> dict[str, Any]:
    """For metrics.json and the bench: GiB, rounded."""
    return {"weights_gib": round(plan.weights, 3), "adapter_and_optimizer_gib": round(plan.adapter_and_optimizer, 3),
            "activations_gib": round(plan.activations, 3), "peak_gib": round(plan.total, 3),
            "with_context_gib": round(plan.with_context, 3), "batch": plan.workload.batch,
            "length": plan.workload.length, "fits": plan.fitting_gpus()}


def checkpointing(settings: Any) -> bool:
    """Activation (gradient) checkpointing as the trainer resolves it: DPO_ACTIVATION_CHECKPOINTING when set, else
    DPO_GRADIENT_CHECKPOINTING, the older name (training/trainer.py's dpo_config)."""
    chosen = getattr(settings, "activation_checkpointing", None)
    return bool(settings.gradient_checkpointing if chosen is None else chosen)


def run_config(model: Any, processor: Any, published: bool = False) -> Any:
    """The model's config as this run builds it (the processor's overrides applied: LLaVA-NeXT's grid);
    `published`: the full-size checkpoint's a `shapes:` model stands for, instead of the model's own."""
    overrides = model_overrides(model.family, processor) if model.family.vision else {}
    if not published:
        return load_config(config_path(model), overrides)
    config = full_config(model.family.name)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def plan_for_run(settings: Any, model: Any, processor: Any, tokens: dict[str, Any] | None,
                 published: bool = False) -> tuple[Any, Any, Any]:
    """(architecture, plan at the longest pair, plan at the p95 pair) for this run's settings and data;
    `published`: for the full-size checkpoint a `shapes:` model stands for, instead of the model itself."""
    vision = model.family.vision
    config = run_config(model, processor, published)
    arch = describe_architecture(config, model.family, lora_config(settings, model.family))
    patches = patches_per_image(model.family, processor) if vision else None
    if patches:  # a pixel budget (Qwen-VL): the processor's max_pixels, not the config, sizes what the tower sees
        arch = replace(arch, vision_patches=patches)
    tokens = tokens or {}
    pair = tokens.get("pair_tokens", {"p95": settings.max_length, "max": settings.max_length})
    longest = min(pair["max"], settings.max_length or pair["max"])
    answer = tokens.get("answer_tokens", {}).get("p95", 0)
    per_pair = tokens.get("image_tokens_per_image", {}).get("images", 0) / max(tokens.get("pairs_measured", 1), 1)
    work = Workload(batch=settings.per_device_train_batch_size, length=longest, answer_tokens=answer,
                    images_per_pair=math.ceil(per_pair) if vision else 0,
                    tiles_per_image=tiles_per_image(model.family, processor) if vision else 0,
                    gradient_checkpointing=checkpointing(settings), lora_dropout=settings.lora_dropout)
    at_p95 = replace(work, length=min(pair["p95"], longest))
    return arch, plan_memory(arch, settings.quantization, work), plan_memory(arch, settings.quantization, at_p95)


def device_memory_gib() -> float | None:
    """This process's GPU's memory (None on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB


def peak_allocated_gib() -> float | None:
    """What torch allocated at most on this process's GPU so far (None on a CPU): the plan's `total`."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / GIB, 3)


def _check_merge(settings: Any, arch: Architecture, device: float | None) -> None:
    """The merge runs after training, on the same GPU: a run that cannot merge is refused before it trains."""
    need = merge_gib(arch)
    log.info("  merge (DPO_MERGE=1), after training: the model in bf16, %.1f GiB with the CUDA context", need)
    if device is not None and need > device:
        message = (f"the merge (DPO_MERGE=1) needs {need:.1f} GiB on the GPU for the model in bf16, this one has "
                   f"{device:.1f} GiB; unset DPO_MERGE and merge the adapter on a larger machine")
        if settings.memory_check:
            raise ConfigError(message + " (DPO_MEMORY_CHECK=false starts anyway)")
        log.warning(message)


def check_memory(settings: JobSettings, model_ref: ModelRef, processor: Any, report: dict[str, Any]) -> MemoryPlan:
    """Log the memory plan; on a GPU it does not fit, refuse to start (DPO_MEMORY_CHECK=false starts anyway)."""
    arch, plan, at_p95 = plan_for_run(settings, model_ref, processor, report.get("tokens"))
    for line in describe(plan, arch, settings.quantization, at_p95):
        log.info(line)
    budget = image_budget(model_ref.family, processor, settings.image_max_pixels) if model_ref.family.vision else None
    if budget:
        log.info("  %s", budget)
    if model_ref.stands_for:  # a shapes: model has the real token counts: plan the real model on them too
        full = plan_for_run(settings, model_ref, processor, report.get("tokens"), published=True)
        log.info("as %s at full size (the checkpoint this shapes: model stands for):", model_ref.stands_for)
        for line in describe(full[1], full[0], settings.quantization, full[2]):
            log.info(line)
    device = device_memory_gib()
    if settings.merge:
        _check_merge(settings, arch, device)
    if device is not None and not plan.fits(device):
        hint = fewer_tokens_hint(model_ref.family, processor) if model_ref.family.vision else None
        fixes = "; ".join(reductions(arch, settings.quantization, plan, settings, hint))
        message = (f"the memory plan needs {plan.with_context:.1f} GiB on each GPU, this one has {device:.1f} GiB; "
                   f"to bring it down: {fixes}")
        if settings.memory_check:
            raise ConfigError(message + " (DPO_MEMORY_CHECK=false starts anyway)")
        log.warning(message)
    return plan
