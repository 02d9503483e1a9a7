"""The on-policy rounds' plan (DPO_ROUNDS > 0), known from --dry-run: what a round samples, judges and trains on,
the judge model's memory beside the policy, and hours and spot dollars a round on each GPU the SkyPilot YAMLs rent.

    a round = sampling + judging + training (onpolicy/rounds.py)

- sampling, by DPO_SAMPLER=transformers on the job's GPU: prompts x DPO_SAMPLES_PER_PROMPT x
  DPO_SAMPLE_MAX_NEW_TOKENS decoded tokens (every sample as long as it may be: an upper bound), at an assumed
  DECODE_TOKENS_PER_S. No source gives that rate for this job: transformers' `generate` on a bitsandbytes 4-bit
  7B model, a prompt's samples decoded together as one batch (onpolicy/sample.py), is bound by reading the weights
  once a step and by the 4-bit kernels; the prompts' prefill is left out. DPO_SAMPLER=openai samples on the
  endpoint's GPU, not counted here.
- judging, by DPO_JUDGE=model on the job's GPU: one forward a claim (onpolicy/claims.py asks each claim as a yes/no
  question about the image, no decoding), CLAIM_TOKENS an assumed claim's length, so sample_max_new_tokens /
  CLAIM_TOKENS claims a sample, each a forward of the prompt's p50 tokens (its image tokens included) + the claim
  through the judge: 2 x N_judge FLOPs a token, and its tower once a question, at cost.py's assumed MFU. The
  ground-truth judge is instant; DPO_JUDGE=openai judges on the endpoint's GPU.
- training: the cost estimate's FLOPs a pair (cost.py) over the pairs a round trains on: DPO_MAX_STEPS x batch x
  accumulation, or the epochs over at most prompts x DPO_PAIRS_PER_PROMPT sampled pairs (ties and the length
  balance drop some) plus the dataset's own with DPO_MIX_DATASET_PAIRS.

Every figure is an estimate and says so; `make bench-gpu` does not measure sampling or judging yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.errors import ConfigError
from entrypoint.models.architecture import Architecture, load_config
from entrypoint.models.architecture import describe as describe_architecture
from entrypoint.models.loading import ModelRef, config_path, resolve_model
from entrypoint.models.lora import lora_config
from entrypoint.planning.cost import (
    GPUS,
    MFU,
    estimated_pairs_per_second,
    model_size,
    offered_gpus,
    pair_flops,
    run_size,
    total_rows,
)
from entrypoint.planning.memory import Beside, MemoryPlan, checkpointing, loaded_weights, plan_for_run

log = logging.getLogger("entrypoint")

# Sampled tokens a second on one GPU: assumed, not measured (module docstring), the same on every GPU the YAMLs rent
# (an H100 is likely faster: the figure is a floor for it).
DECODE_TOKENS_PER_S = 150.0
CLAIM_TOKENS = 16  # an answer's tokens a claim (a sentence or clause: claims.py's split_claims), assumed


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


@dataclass(frozen=True)
class Judge:
    """DPO_JUDGE=model's judge model, counted on its architecture (meta device, no weights)."""

    setting: str  # DPO_JUDGE_MODEL as given
    ref: ModelRef
    arch: Architecture
    weights_gib: float

    def beside(self, quantization: str) -> Beside:
        return Beside(f"the judge DPO_JUDGE_MODEL={self.setting} ({_count(self.arch.params)} parameters, "
                      f"{quantization})", self.weights_gib,
                      "a smaller DPO_JUDGE_MODEL, or the judge served elsewhere (DPO_JUDGE=openai with DPO_JUDGE_URL)")


def judge_ref(settings: JobSettings, cache_dir: Path) -> ModelRef | None:
    """DPO_JUDGE=model's judge model named and found (None for any other judge), before anything loads: its
    config.json read (for a Hub id, fetched: a few KB)."""
    if settings.judge != "model" or not settings.rounds:
        return None
    if not settings.judge_model:
        raise ConfigError("DPO_JUDGE=model needs DPO_JUDGE_MODEL, the vision-language model that judges each claim, "
                          "e.g. DPO_JUDGE_MODEL=llava-hf/llava-v1.6-mistral-7b-hf (a Hub id, a local path or "
                          "tiny:<family>)")
    return resolve_model(settings.judge_model, "auto", None, cache_dir, "DPO_JUDGE_MODEL")


def judge_model(settings: JobSettings, cache_dir: Path) -> Judge | None:
    """The judge DPO_JUDGE=model loads beside the policy (None for any other judge), its weights counted as
    load_model holds them in DPO_QUANTIZATION."""
    ref = judge_ref(settings, cache_dir)
    if ref is None:
        return None
    arch = describe_architecture(load_config(config_path(ref)), ref.family, lora_config(settings, ref.family))
    return Judge(settings.judge_model, ref, arch, loaded_weights(arch, settings.quantization))


@dataclass(frozen=True)
class RoundSize:
    prompts: int | None  # the training prompts sampled each round (None: unknown)
    samples: int | None
    pairs_at_most: int | None  # sampled pairs a round can give
    trained: int | None  # pairs through the model in a round's training
    schedule: str
    heldout: int | None


def round_size(settings: JobSettings, train_pairs: int | None, eval_pairs: int | None) -> RoundSize:
    """What one round samples, pairs and trains on, from the run's training prompts (cost.py's run_size)."""
    prompts = train_pairs
    samples = prompts * settings.samples_per_prompt if prompts is not None else None
    pairs = prompts * settings.pairs_per_prompt if prompts is not None else None
    per_step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    if settings.max_steps and settings.max_steps > 0:
        return RoundSize(prompts, samples, pairs, settings.max_steps * per_step,
                         f"DPO_MAX_STEPS={settings.max_steps} a round", eval_pairs)
    epochs = settings.num_train_epochs
    over = pairs + (prompts if settings.mix_dataset_pairs else 0) if pairs is not None else None
    return RoundSize(prompts, samples, pairs, round(over * epochs) if over is not None else None,
                     f"{epochs:g} epoch{'s' if epochs != 1 else ''} a round", eval_pairs)


def sampling_hours(settings: JobSettings, size: RoundSize) -> float:
    """This GPU's hours of sampling a round (0 when an endpoint samples)."""
    if settings.sampler != "transformers" or size.samples is None:
        return 0.0
    return size.samples * settings.sample_max_new_tokens / DECODE_TOKENS_PER_S / 3600


def judging_hours(settings: JobSettings, size: RoundSize, judge: Judge | None, prompt_tokens: int,
                  patches: int, peak_tflops: float) -> float:
    """This GPU's hours of judging a round: the model judge's forwards, one a claim (0 for the other judges)."""
    if judge is None or size.samples is None:
        return 0.0
    claims = size.samples * max(1, settings.sample_max_new_tokens // CLAIM_TOKENS)
    judged = model_size(judge.arch)
    flops = 2 * judged.decoder * (prompt_tokens + CLAIM_TOKENS) + 2 * judged.vision * patches
    return claims * flops / (peak_tflops * 1e12 * MFU) / 3600


def _hours(value: float) -> str:
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:.2f}" if value < 10 else f"${value:,.0f}"


def _sampler(settings: JobSettings) -> str:
    if settings.sampler == "openai":
        return (f"openai, the endpoint {settings.sampler_url} (model {settings.sampler_model or settings.model}; its "
                "GPU is not counted below)")
    return "transformers, the job's own policy (in-process generate, on this GPU)"


def _judge(settings: JobSettings, judge: Judge | None) -> str:
    if judge is not None:
        return (f"model, {judge.setting} ({judge.ref.family.name}, {_count(judge.arch.params)} parameters, "
                f"{settings.quantization}: {judge.weights_gib:.1f} GiB of weights beside the policy): each claim of "
                "a sample asked as a yes/no question about the image")
    if settings.judge == "openai":
        return f"openai, the endpoint {settings.judge_url} (model {settings.judge_model}; its GPU is not counted below)"
    return "ground-truth, each row's right answer (no model; instant)"


def describe(settings: JobSettings, size: RoundSize, plan: MemoryPlan, judge: Judge | None,
             rows: list[tuple[str, float, float, float | None]]) -> list[str]:
    """The plan as log lines; `rows`: (GPU, sampling, judging, training hours) a round, training None when unknown."""
    def n(value: int | None) -> str:
        return f"{value:,}" if value is not None else "unknown (DPO_MAX_SAMPLES sets it)"

    mixed = " + the dataset's own pairs (DPO_MIX_DATASET_PAIRS)" if settings.mix_dataset_pairs else ""
    lines = [
        f"on-policy rounds plan (DPO_ROUNDS={settings.rounds}), each round:",
        f"  sampling: {n(size.prompts)} prompts x {settings.samples_per_prompt} samples (DPO_SAMPLES_PER_PROMPT) = "
        f"{n(size.samples)} samples, at most {settings.sample_max_new_tokens} new tokens each "
        f"(DPO_SAMPLE_MAX_NEW_TOKENS), temperature {settings.sample_temperature:g}; sampler {_sampler(settings)}",
        f"  judge: {_judge(settings, judge)}",
        f"  pairs: at most {n(size.pairs_at_most)} a round ({n(size.prompts)} prompts x {settings.pairs_per_prompt} "
        f"(DPO_PAIRS_PER_PROMPT); ties and the length balance drop some){mixed}",
        f"  training: {size.schedule}: {n(size.trained)} pairs at most; reference: "
        f"{'the policy the round starts from' if settings.round_reference == 'previous' else 'the base model'} "
        "(DPO_ROUND_REFERENCE)",
        f"  held-out: {n(size.heldout)} prompts answered greedily and judged before round 1 and after each round",
        f"  memory: the policy's plan {plan.with_context:.1f} GiB training"
        + (f", {plan.sampling_device_gib:.1f} GiB while sampling (with its KV cache and prefill)"
           if plan.sampling_gib else "")
        + (f" + the judge's weights {plan.beside_gib:.1f} GiB" if judge else "")
        + f" = {plan.device_gib:.1f} GiB on the GPU; fits: {', '.join(plan.fitting_gpus()) or 'none'}",
        f"  time and cost a round, ESTIMATES (not measured): sampling at an assumed {DECODE_TOKENS_PER_S:g} decoded "
        f"tokens a second, judging one forward a claim ({CLAIM_TOKENS} tokens a claim assumed) at {MFU:.0%} MFU, "
        "training as the cost estimate counts a pair (entrypoint/planning/rounds.py):",
        "| GPU | sampling h | judging h | training h | round h | round $ (spot) | "
        f"{settings.rounds} rounds $ |", "|---|---|---|---|---|---|---|",
    ]
    for name, sampling, judging, training in rows:
        if training is None:
            lines.append(f"| {name} | {_hours(sampling)} | {_hours(judging)} | - | - | - | - |")
            continue
        hours, price = sampling + judging + training, GPUS[name].spot_usd
        lines.append(f"| {name} | {_hours(sampling)} | {_hours(judging)} | {_hours(training)} | {_hours(hours)} | "
                     f"{_usd(hours * price[0])} - {_usd(hours * price[1])} | {_usd(settings.rounds * hours * price[0])}"
                     f" - {_usd(settings.rounds * hours * price[1])} |")
    return lines


def log_rounds_plan(settings: JobSettings, model_ref: ModelRef, processor: Any, report: dict[str, Any],
                    sampled: int, plan: MemoryPlan, judge: Judge | None) -> list[str]:
    """--dry-run with DPO_ROUNDS > 0: log (and return) the rounds' plan. `plan`: the memory plan check_memory made
    (the judge beside the policy); `sampled`: the rows the dry run read."""
    tokens = report.get("tokens") or {}
    count, source = total_rows(settings.dataset, settings.dataset_split, report, sampled)
    run = run_size(count, source, report, settings)
    size = round_size(settings, run.train_pairs, run.eval_pairs)
    published = bool(model_ref.stands_for)
    arch, work, _ = plan_for_run(settings, model_ref, processor, tokens or None, published=published)
    pair = tokens.get("pair_tokens", {}).get("p50", settings.max_length)
    prompt = tokens.get("prompt_tokens", {}).get("p50", pair)
    flops = pair_flops(model_size(arch), pair, work.workload.images_per_pair,
                       arch.vision_patches * work.workload.tiles_per_image, checkpointing(settings),
                       work.workload.encode_images_once).total
    patches = judge.arch.vision_patches if judge else 0
    rows = []
    for name in offered_gpus()[0]:
        gpu = GPUS.get(name)
        if gpu is None:
            continue
        training = size.trained / estimated_pairs_per_second(flops, gpu) / 3600 if size.trained is not None else None
        rows.append((name, sampling_hours(settings, size), judging_hours(settings, size, judge, prompt, patches,
                                                                         gpu.peak_tflops), training))
    lines = describe(settings, size, plan, judge, rows)
    for line in lines:
        log.info(line)
    return lines
