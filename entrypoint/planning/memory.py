"""The memory plan: the peak GPU memory a run needs on each device, known before a GPU is rented.

    peak = weights + LoRA and optimizer state + activations (+ the CUDA context)

Every part is counted on the model's real architecture (built on the meta device, architecture.py; the decoder
layer's norms and the tower's outputs read off the same module tree and config, `layout`) and follows what the code
does to memory, line by line:

- weights: the quantized linear layers as nf4 with double quantization (4 bits, plus an 8-bit absmax
  per 64 weights, plus an fp32 per 256 absmax) or LLM.int8 (1 byte); every other parameter (vision
  tower, projector, embeddings, lm_head, norms) in fp32, because peft's
  prepare_model_for_kbit_training upcasts them; without quantization, all in the compute dtype.
- LoRA and optimizer: every trained weight in fp32 (training/trainer.py, keep_trained_weights_in_fp32: bf16
  rounds the recipes' updates away), with fp32 gradients and AdamW's two moments. Modules trained in full
  (DPO_TRAIN_PROJECTOR) are a second copy of their weights, the same four fp32 copies.
- activations (`activations`), for one micro-batch of T = 2 x batch x length tokens (DPO runs the chosen and the
  rejected sequence of every pair together), in the dtypes a bf16 GPU run gives them. k-bit preparation leaves the
  embeddings and norms in fp32 and bitsandbytes' Linear4bit returns its input's dtype, so the residual stream, the
  norms' outputs and the MLP are fp32 (bf16 for an unquantized base, loaded in bf16: `stream_bytes`); autocast
  runs the matmuls and attention in bf16. Saved for the backward
  (tests/test_plan_activations.py counts them with autograd's saved-tensor hooks on every family's `shapes:` model):
  with activation checkpointing each decoder layer keeps its fp32 input, and one layer at a time is recomputed for
  its backward (its saved tensors); without it, every layer keeps its saved tensors; the attention mask and rotary
  tables are shared by the layers; outside the layers, the final norm's input and the fused LM head's (over
  completion tokens only). On top of what is saved, at different moments of the step: the gradients in flight
  during a layer's backward; the fused LM head's tiles (TRL computes log-probabilities in vocabulary chunks, never
  the full logits); the reference pass (the same model, adapter off, no grad), which TRL runs after the policy's
  forward while everything the policy saved is held. With images encoded once (DPO_ENCODE_IMAGES_ONCE, the tower
  frozen) the tower's output for the doubled batch stays cached for the whole step; on TRL's own path the tower
  runs with grad (its layers checkpointed) and again for the reference.
- the CUDA context and the allocator's slack: a fixed 1 GiB plus 5%.
- DPO_MERGE=1, after training (its memory freed first): the base model dequantized to bf16, 2 bytes a
  parameter, merged in place (`merge_gib`).
- DPO_ROUNDS with DPO_JUDGE=model: the judge model, a second model loaded at the first round's judging and held to the
  end of the rounds (onpolicy/claims.py), so beside the policy while it trains: its weights as loaded for inference
  (`loaded_weights`: the quantized layers as above, the rest in the bf16 compute dtype: no k-bit preparation), its
  activations (one yes/no question's forward at a time, no grad) left out. `MemoryPlan.beside_gib`.

The plan assumes bf16 compute (every GPU the YAMLs rent has it) and each device holding the whole
model (DDP). `bench/bench_gpu.py` prints it next to the measured peak.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.errors import DoesNotFit
from entrypoint.models.architecture import Architecture, load_config, meta_model
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
ACT = 2  # bytes per bf16 value: what autocast's matmuls and attention produce
FP32 = 4
MASK = 1  # a bool
INDEX = 8  # an int64
CONTEXT_GIB = 1.0  # CUDA context + cuBLAS workspace, outside torch's allocator
SLACK = 0.05  # allocator fragmentation
# What the cloud offers, by usable memory (GiB): the sky YAMLs' accelerators.
GPUS = {"24 GB (L4, A10G)": 22.0, "40 GB (A100-40GB)": 39.4, "80 GB (A100-80GB, H100)": 79.1}
_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, 8-bit absmax per 64, fp32 per 256 absmax
# TRL's fused LM head (trl/kernels/chunked_logprob.py): TOKEN_CHUNK_SIZE tokens by _CHUNKED_LOGPROB_CHUNK_SIZE
# (trl/trainer/utils.py) vocabulary entries a tile.
_HEAD_TOKENS, _HEAD_VOCAB = 4096, 32768
# The linear layers LoRA adapts in a Llama-style decoder layer (q, k, v, o, gate, up, down): `all-linear`.
_LAYER_LINEARS = 7


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
    encode_images_once: bool = True  # DPO_ENCODE_IMAGES_ONCE with the tower frozen (not DPO_LORA_VISION)


@dataclass(frozen=True)
class Layout:
    """What the activations depend on beyond Architecture's widths, read off the model (`layout`). The defaults are
    LLaVA(-NeXT)'s: a Mistral/Llama decoder layer and the CLIP ViT-L/14 tower with feature layer -2."""

    head_dim: int = 128
    # RMSNorms of a decoder layer after the one on its input, over the hidden width: each saves its own fp32 input
    # (Llama's post-attention norm; Gemma 3 has three, around the attention output and the MLP).
    hidden_norms: int = 1
    head_norms: bool = False  # q_norm and k_norm (Qwen3, Gemma 3): each saves the fp32 queries or keys, every head
    vision_state_bytes: int = FP32  # a tower hidden state's element: fp32 where an fp32 position table is added
    vision_states: int = 2  # patch-sized states in the tower's output: the last, and the feature layer's if another
    vision_layers: int = 24  # on TRL's path each keeps its fp32 input (checkpointed) for the tower's backward
    vision_merged: float = 0.0  # bytes a patch of the tower's own merged outputs (Qwen-VL's merger and DeepStack)


LLAVA = Layout()


@dataclass(frozen=True)
class Activations:
    """One micro-batch's activation memory in bytes, by when it is alive (the module's docstring)."""

    tokens: int
    held: float  # from the policy's forward to the end of its backward: checkpointed layer inputs, masks, rotary
    outside: float  # saved outside the decoder layers (final norm, LM head input): freed before the layers' backward
    layer: float  # one decoder layer's saved tensors, recomputed for its backward (0 without checkpointing: held)
    in_flight: float  # the gradients in flight during a layer's backward
    head: float  # the fused LM head's tiles at the end of the policy's forward, and its input's gradient
    reference: float  # the reference forward's (no grad) working set, on top of what the policy holds
    weight_copies: float  # autocast's bf16 copies of the trained weights, cached during the policy's forward
    vision_kept: float  # for the whole step: the tower's cached output (encode-once) or its saved inputs (TRL's path)
    vision_working: float  # one tower layer's working set, while the tower runs (before the decoder does)
    dequantized: float = 0.0  # the one 4-bit (or 8-bit) weight bitsandbytes dequantizes to bf16 for a matmul

    @property
    def saved(self) -> float:
        """What autograd saves for the policy's backward, one recomputed layer included (the tested part)."""
        return self.held + self.outside + self.layer

    def moments(self) -> dict[str, float]:
        """What comes on top of `held` at each of the decoder's three moments, by name."""
        return {"the LM head, at the end of the policy's forward": self.outside + self.head + self.weight_copies,
                "the reference pass": self.outside + self.reference,
                "a layer's backward": self.layer + self.in_flight}

    @property
    def decoder(self) -> float:
        """The decoder's peak: its highest moment, on top of what is held throughout."""
        return self.held + self.dequantized + max(self.moments().values())

    @property
    def peak(self) -> float:
        return self.vision_kept + max(self.vision_working, self.decoder)


@dataclass(frozen=True)
class MemoryPlan:
    weights: float  # GiB
    adapter_and_optimizer: float
    activations: float
    total: float  # peak allocated by torch
    with_context: float  # what the device must hold
    workload: Workload
    parts: Activations  # the activations' parts, in bytes
    layout: Layout = LLAVA  # what `reductions` plans the same model again with
    beside_gib: float = 0.0  # another model's weights on the same GPU for the whole run (DPO_JUDGE=model's judge)
    beside: str = ""  # what that model is, for the log
    sampling_gib: float = 0.0  # in-process sampling's KV cache and prefill, instead of training's activations

    @property
    def sampling_device_gib(self) -> float:
        """While a round samples (no trainer yet, no training activations): the weights, the adapter (and room for
        its optimizer's state), the context and sampling's own memory."""
        return self.with_context - self.activations + self.sampling_gib if self.sampling_gib else 0.0

    @property
    def device_gib(self) -> float:
        """What the device must hold: the policy's plan with the CUDA context (or, when more, what sampling needs),
        and the model beside it."""
        return max(self.with_context, self.sampling_device_gib) + self.beside_gib

    def fits(self, usable_gib: float) -> bool:
        return self.device_gib <= usable_gib

    def fitting_gpus(self) -> list[str]:
        return [name for name, usable in GPUS.items() if self.fits(usable)]


def layout(config: Any, family: Any) -> Layout:
    """The model's Layout: the decoder layer's norms from its module tree (on the meta device), the tower's outputs
    from its config, as transformers 5 builds them."""
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    layers = getattr(meta_model(config, family).get_decoder(), "layers", None)
    # A decoder without a `layers` list (some remote-code causal LM): counted as a Llama layer
    norms = [name for name, module in layers[0].named_modules() if type(module).__name__.endswith("Norm")] \
        if layers else ["input_layernorm", "post_attention_layernorm"]
    head_norms = any(name.endswith(("q_norm", "k_norm")) for name in norms)
    # The norm on the layer's input saves that input, which checkpointing keeps anyway; every other one saves its own
    hidden_norms = max(len([name for name in norms if not name.endswith(("q_norm", "k_norm"))]) - 1, 0)
    vision = getattr(config, "vision_config", None)
    if vision is None:
        return Layout(head_dim, hidden_norms, head_norms, 0, 0, 0, 0.0)
    tower_layers = getattr(vision, "depth", None) or vision.num_hidden_layers
    merge = getattr(vision, "spatial_merge_size", None)
    if merge:
        # Qwen-VL: the patch embedding is a bf16 conv under autocast and Qwen3-VL's position table is cast to it
        # (modeling_qwen3_vl.py: `pos_embeds.to(hidden_states.dtype)`), so the states are bf16. The output holds
        # the last states, the merger's tokens (one a merge x merge patches, text-wide) and DeepStack's as many.
        outputs = 1 + len(getattr(vision, "deepstack_visual_indexes", None) or ())
        return Layout(head_dim, hidden_norms, head_norms, ACT, 1, tower_layers,
                      outputs * vision.out_hidden_size * ACT / merge**2)
    # CLIP and SigLIP add an fp32 position table to the bf16 patch embedding: fp32 states. transformers 5 keeps only
    # the hidden states a model reads (utils/output_capturing.py, select_hidden_states): the feature layer's, beside
    # the last (LLaVA's -2); Idefics2 and Gemma 3 read the last.
    feature = getattr(config, "vision_feature_layer", -1)
    selected = [feature] if isinstance(feature, int) else list(feature)
    return Layout(head_dim, hidden_norms, head_norms, FP32, 1 + sum(1 for index in selected if index != -1),
                  tower_layers)


def _weights(arch: Architecture, quantization: str, other_bytes: int = FP32) -> float:
    """Bytes of the weights: the quantized linear layers as bitsandbytes holds them, every other parameter at
    `other_bytes` (fp32 once k-bit preparation upcast them for training)."""
    other = arch.params - arch.quantized
    if quantization == "4bit":
        return arch.quantized * _NF4_BYTES + other * other_bytes
    if quantization == "8bit":
        return arch.quantized * 1.0 + other * other_bytes
    return arch.params * ACT


def loaded_weights(arch: Architecture, quantization: str) -> float:
    """GiB of a model loaded for inference only (models/loading.py's load_model, no k-bit preparation): the quantized
    layers as in training, every other parameter in the bf16 compute dtype."""
    return _weights(arch, quantization, other_bytes=ACT) / GIB


def _adapter_and_optimizer(arch: Architecture) -> float:
    # weights, gradients, AdamW's exp_avg and exp_avg_sq, all fp32
    return (arch.lora_params + arch.full_params) * FP32 * 4


def _adapted_share(arch: Architecture) -> float:
    """The share of the decoder's linear layers LoRA adapts (1 for `all-linear`)."""
    return min(1.0, arch.lora_modules / (_LAYER_LINEARS * arch.layers)) if arch.layers else 0.0


def _lora_rank(arch: Architecture) -> float:
    """LoRA's rank, from its parameter count: r x (in + out) a layer, summed over the seven linear layers."""
    h, kv, inter, width = arch.hidden_size, arch.kv_size, arch.intermediate_size, arch.attention_width
    widths = 7 * h + 2 * width + 2 * kv + 3 * inter
    return arch.lora_params / (arch.layers * _adapted_share(arch) * widths) if arch.lora_modules else 0.0


def stream_bytes(quantization: str) -> int:
    """Bytes an element of the residual stream, the norms' outputs and the MLP: fp32 for a k-bit base (k-bit
    preparation upcasts the embeddings and norms, and bitsandbytes' Linear4bit returns its input's dtype: `.to(
    inp_dtype)` in nn/modules.py), bf16 otherwise (the model loads in bf16 and autocast's linear layers give bf16)."""
    return ACT if quantization == "none" else FP32


def layer_saved_per_token(arch: Architecture, shape: Layout, length: int, dropout: bool, stream: int = FP32) -> float:
    """Bytes one decoder layer saves for its backward a token, its input left out (checkpointing keeps that)."""
    h, kv, inter, width = arch.hidden_size, arch.kv_size, arch.intermediate_size, arch.attention_width
    heads, kv_heads = width // shape.head_dim, kv // shape.head_dim
    # Each RMSNorm computes in fp32 and saves its rsqrt (one fp32 a row) and its fp32 input: for the first, the
    # layer input itself when the stream is fp32 (held already), a new fp32 copy when it is bf16. q_norm and
    # k_norm work per head, on every query and key.
    norms = FP32 * (1 + shape.hidden_norms) + FP32 * h * (shape.hidden_norms + (stream != FP32))
    if shape.head_norms:
        norms += FP32 * (width + kv) + FP32 * (heads + kv_heads)
    # SDPA's inputs cast to bf16 by autocast: q, and k, v repeated to every query head (transformers repeats them
    # whenever a mask is passed, integrations/sdpa_attention.py use_gqa_in_sdpa; DPO pads, so there is one); its
    # output and fp32 log-sum-exp; the bool mask made a bf16 bias, length values a row (ATen's
    # convert_boolean_attn_mask). Rotated q and k are not saved: RoPE's multiplications save cos and sin only.
    attention = ACT * 4 * width + FP32 * heads + ACT * length
    # gate's and up's outputs and act(gate), saved by the activation and the product
    mlp = stream * 3 * inter
    # Per adapted layer: its input width in = h for q, k, v, gate, up; the attention width for o; inter for down.
    inputs = 5 * h + width + inter
    if dropout:  # the fused dropout's bool mask (CUDA's native_dropout) and its output as lora_A's bf16 input
        lora = (MASK + ACT) * inputs
    elif stream == FP32:  # lora_A's bf16 copy of its fp32 input; o_proj's input is SDPA's bf16 output, saved already
        lora = ACT * (inputs - width)
    else:  # the bf16 inputs themselves: the two norms' outputs (q, k, v share one, gate and up the other), down's
        lora = ACT * (2 * h + inter)
    lora = _adapted_share(arch) * (lora + ACT * _lora_rank(arch) * _LAYER_LINEARS)  # + lora_A's outputs, r wide
    return norms + attention + mlp + lora


def activations(arch: Architecture, work: Workload, shape: Layout = LLAVA, quantization: str = "4bit") -> Activations:
    """The activations' parts in bytes (module docstring), in the dtypes of a bf16 GPU run."""
    h, inter = arch.hidden_size, arch.intermediate_size
    stream = stream_bytes(quantization)
    tokens = 2 * work.batch * work.length
    layer = tokens * layer_saved_per_token(arch, shape, work.length, work.lora_dropout > 0, stream)
    # Shared by every layer: the bool attention mask (length values a row) and RoPE's cos and sin, in the embeddings'
    # dtype (per sequence for Qwen's 3-D positions; one table for the batch where positions are shared: an upper
    # bound then).
    shared = tokens * (MASK * work.length + 2 * stream * shape.head_dim)
    # Every layer's input (the first's: the embeddings, images merged): checkpointing keeps it; without, the first
    # norm saves it when it is fp32, and only its own fp32 copy of a bf16 one (in `layer`)
    kept_inputs = work.gradient_checkpointing or stream == FP32
    inputs = tokens * arch.layers * stream * h if kept_inputs else 0.0
    held = shared + inputs + (0.0 if work.gradient_checkpointing else arch.layers * layer)
    # The LM head scores completion tokens only (TRL's fused head keeps the positions with a label).
    scored = 2 * work.batch * min(work.answer_tokens, work.length)
    # The final norm's fp32 input and rsqrt; the masks (labels, image tokens); the head's input (a copy of the
    # scored positions), their int64 targets and fp32 log-normaliser and entropy.
    outside = tokens * (FP32 * h + FP32 + 3 * MASK) + scored * (stream * h + INDEX + 2 * FP32)
    # A layer's backward: the gradient of its output (kept for the residual) and of its input, and the MLP's
    # product's, act's and up's, each in the dtype of the tensor it is the gradient of.
    in_flight = tokens * stream * (2 * h + 3 * inter)
    # TRL's fused head: a bf16 tile of up to 4096 tokens by 32,768 vocabulary entries, the weight chunk and the
    # hidden chunk cast to bf16 (chunked_logprob.py forward and backward); its backward's fp32 gradient of the
    # scored positions and of the whole last hidden state.
    chunk, vocab = min(scored, _HEAD_TOKENS), min(arch.vocab_size, _HEAD_VOCAB)
    head = ACT * (chunk * vocab + vocab * h + chunk * h) + FP32 * h * scored + stream * h * tokens
    # The reference pass, no grad: a layer's working set (the residual and norm output, gate, up, act) at a time
    reference = tokens * stream * (2 * h + 3 * inter)
    weight_copies = ACT * (arch.lora_params + arch.full_params)
    images = work.batch * work.images_per_pair * work.tiles_per_image  # each image once, not chosen and rejected
    patches = images * arch.vision_patches
    state = min(shape.vision_state_bytes, stream)  # a bf16 model's position tables are bf16 too
    if work.encode_images_once:  # the tower's output for the doubled batch, cached until the next step
        kept = 2 * patches * (shape.vision_states * state * arch.vision_hidden_size + shape.vision_merged)
        working = patches
    else:  # TRL's path: the doubled batch, with grad (its layers' inputs checkpointed), again for the reference
        kept = 2 * patches * (shape.vision_layers + 1) * state * arch.vision_hidden_size
        working = 2 * patches
    # One tower layer's working set while it runs, about 8 fp32 states wide (not measured on the CPU: bench-gpu)
    vision_working = working * 8 * FP32 * arch.vision_hidden_size
    # bitsandbytes dequantizes a quantized weight to bf16 for each matmul, forward and backward, one at a time (the
    # MLP's are the largest)
    dequantized = ACT * h * inter if quantization != "none" else 0.0
    return Activations(tokens, held, outside, layer if work.gradient_checkpointing else 0.0, in_flight, head,
                       reference, weight_copies, kept, vision_working, dequantized)


def plan_memory(arch: Architecture, quantization: str, work: Workload, shape: Layout = LLAVA) -> MemoryPlan:
    weights = _weights(arch, quantization) / GIB
    adapter = _adapter_and_optimizer(arch) / GIB
    parts = activations(arch, work, shape, quantization)
    total = (weights + adapter + parts.peak / GIB) * (1 + SLACK)
    return MemoryPlan(weights, adapter, parts.peak / GIB, total, total + CONTEXT_GIB, work, parts, shape)


def merge_gib(arch: Architecture) -> float:
    """What DPO_MERGE's step holds on the GPU, with the CUDA context: the whole model in bf16."""
    return arch.params * ACT / GIB * (1 + SLACK) + CONTEXT_GIB


def reductions(arch: Architecture, quantization: str, plan: MemoryPlan, settings: Any,
               fewer_image_tokens: str | None) -> list[str]:
    """Settings that bring the plan down, each with the plan it gives (where it can be computed here)."""
    work, out = plan.workload, []
    if work.batch > 1:
        smaller = plan_memory(arch, quantization, replace(work, batch=1), plan.layout)
        out.append(f"DPO_PER_DEVICE_TRAIN_BATCH_SIZE=1 with DPO_GRADIENT_ACCUMULATION_STEPS="
                   f"{settings.gradient_accumulation_steps * work.batch} ({smaller.with_context:.1f} GiB)")
    if not work.gradient_checkpointing:
        checkpointed = plan_memory(arch, quantization, replace(work, gradient_checkpointing=True), plan.layout)
        out.append(f"DPO_GRADIENT_CHECKPOINTING=true ({checkpointed.with_context:.1f} GiB)")
    if quantization != "4bit":
        quantized = plan_memory(arch, "4bit", work, plan.layout)
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
    parts = plan.parts
    moment, top = max(parts.moments().items(), key=lambda item: item[1])
    images = "the tower's output, cached" if work.encode_images_once else "the tower's saved inputs"
    lines.append(f"  activations: {parts.held / GIB:.1f} GiB held to the backward (each layer's input, the attention "
                 f"mask, RoPE) + {(top + parts.dequantized) / GIB:.1f} GiB at the peak, {moment}"
                 f"{f' + {parts.vision_kept / GIB:.2f} GiB of images ({images})' if parts.vision_kept else ''}")
    if p95 is not None:
        lines.append(f"  at the p95 pair ({p95.workload.length} tokens): {p95.with_context:.1f} GiB")
    if plan.beside_gib:
        lines.append(f"  beside the policy, {plan.beside}: {plan.beside_gib:.1f} GiB of weights, "
                     f"{plan.device_gib:.1f} GiB in all")
    lines.append(f"  fits: {', '.join(fits) if fits else 'none of ' + ', '.join(GPUS)}")
    return lines


def as_dict(plan: MemoryPlan) -> dict[str, Any]:
    """For metrics.json and the bench: GiB, rounded."""
    return {"weights_gib": round(plan.weights, 3), "adapter_and_optimizer_gib": round(plan.adapter_and_optimizer, 3),
            "activations_gib": round(plan.activations, 3), "peak_gib": round(plan.total, 3),
            "with_context_gib": round(plan.with_context, 3),
            **({"beside_gib": round(plan.beside_gib, 3), "beside": plan.beside} if plan.beside_gib else {}),
            **({"sampling_gib": round(plan.sampling_gib, 3), "sampling_device_gib": round(plan.sampling_device_gib, 3)}
               if plan.sampling_gib else {}),
            "device_gib": round(plan.device_gib, 3), "batch": plan.workload.batch,
            "length": plan.workload.length, "fits": plan.fitting_gpus()}


def checkpointing(settings: Any) -> bool:
    """Activation (gradient) checkpointing as the trainer resolves it: DPO_ACTIVATION_CHECKPOINTING when set, else
    DPO_GRADIENT_CHECKPOINTING, the older name (training/trainer.py's dpo_config)."""
    chosen = getattr(settings, "activation_checkpointing", None)
    return bool(settings.gradient_checkpointing if chosen is None else chosen)


def images_encoded_once(settings: Any) -> bool:
    """Whether each image goes through the tower once a step (models/encode_once.py): DPO_ENCODE_IMAGES_ONCE, and
    only while the tower is frozen (DPO_LORA_VISION trains it: policy and reference features differ)."""
    return bool(settings.encode_images_once and not settings.lora_vision)


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
                    gradient_checkpointing=checkpointing(settings), lora_dropout=settings.lora_dropout,
                    encode_images_once=images_encoded_once(settings) if vision else False)
    at_p95 = replace(work, length=min(pair["p95"], longest))
    shape = layout(config, model.family)
    return (arch, plan_memory(arch, settings.quantization, work, shape),
            plan_memory(arch, settings.quantization, at_p95, shape))


def device_memory_gib() -> float | None:
    """The memory this process can have on its GPU (None on a CPU): what is free plus what its torch already holds,
    not the card's total. Another process's share is not this run's: a vLLM server beside the job on the same GPU
    (sky/rlaif_v_onpolicy_vllm.yaml: DPO_SAMPLER=openai) holds its --gpu-memory-utilization from its start."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(torch.cuda.current_device())
    return (free + torch.cuda.memory_reserved(torch.cuda.current_device())) / GIB


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
            raise DoesNotFit(message + " (DPO_MEMORY_CHECK=false starts anyway)")
        log.warning(message)


@dataclass(frozen=True)
class Beside:
    """Another model on the policy's GPU for the whole run: DPO_JUDGE=model's judge (planning/rounds.py)."""

    what: str  # for the log: "the judge DPO_JUDGE_MODEL=... (7.57B parameters, 4bit)"
    gib: float  # its weights
    fix: str  # the settings that take it off this GPU


def sampling_gib(arch: Architecture, settings: Any, prompt_tokens: int) -> float:
    """In-process sampling's own memory in an on-policy round (DPO_SAMPLER=transformers, onpolicy/sample.py): one
    prompt's DPO_SAMPLES_PER_PROMPT sequences at once (`generate` copies the prompt that many times before its
    prefill), each prompt + DPO_SAMPLE_MAX_NEW_TOKENS long: their KV cache, K and V in bf16 in every layer, and one
    layer's prefill working set over the copies (the MLP's two intermediate-wide tensors, four hidden-wide ones).
    The vision tower's pass over the copied images is left out (one layer of it is smaller than the MLP's)."""
    copies = settings.samples_per_prompt
    kv = copies * (prompt_tokens + settings.sample_max_new_tokens) * 2 * arch.layers * arch.kv_size * ACT
    prefill = copies * prompt_tokens * (2 * arch.intermediate_size + 4 * arch.hidden_size) * ACT
    return (kv + prefill) / GIB


def check_memory(settings: JobSettings, model_ref: ModelRef, processor: Any, report: dict[str, Any],
                 beside: Beside | None = None) -> MemoryPlan:
    """Log the memory plan; on a GPU it does not fit, refuse to start (DPO_MEMORY_CHECK=false starts anyway).
    `beside`: another model's weights the GPU holds beside the policy's plan (the on-policy rounds' judge); with
    DPO_ROUNDS and the in-process sampler, sampling's memory is planned too (`sampling_gib`, at the p95 prompt)."""
    arch, plan, at_p95 = plan_for_run(settings, model_ref, processor, report.get("tokens"))
    if beside:
        plan, at_p95 = (replace(p, beside_gib=beside.gib, beside=beside.what) for p in (plan, at_p95))
    if settings.rounds and settings.sampler == "transformers":
        prompt = (report.get("tokens") or {}).get("prompt_tokens", {}).get("p95", settings.max_length)
        sampling = sampling_gib(arch, settings, prompt)
        plan, at_p95 = (replace(p, sampling_gib=sampling) for p in (plan, at_p95))
        log.info("  sampling in a round: %d answers a prompt of %d tokens (p95) + %d new: %.2f GiB of KV cache and "
                 "prefill instead of training's activations: %.1f GiB on the GPU", settings.samples_per_prompt,
                 prompt, settings.sample_max_new_tokens, sampling, plan.sampling_device_gib)
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
        sampling = plan.sampling_device_gib > plan.with_context
        fixes = "; ".join([*(["fewer DPO_SAMPLES_PER_PROMPT or DPO_SAMPLE_MAX_NEW_TOKENS, or the samples drawn "
                              "elsewhere (DPO_SAMPLER=openai with DPO_SAMPLER_URL)"] if sampling else []),
                           *reductions(arch, settings.quantization, plan, settings, hint),
                           *([beside.fix] if beside else [])])
        policy = f"{plan.sampling_device_gib:.1f} GiB for the policy while it samples" if sampling else \
            f"{plan.with_context:.1f} GiB for the policy"
        held = f" ({policy} + {plan.beside_gib:.1f} GiB for {plan.beside})" if plan.beside_gib else \
            f" ({policy})" if sampling else ""
        message = (f"the memory plan needs {plan.device_gib:.1f} GiB on each GPU{held}, this one has {device:.1f} "
                   f"GiB; to bring it down: {fixes}")
        if settings.memory_check:
            raise DoesNotFit(message + " (DPO_MEMORY_CHECK=false starts anyway)")
        log.warning(message)
    return plan
