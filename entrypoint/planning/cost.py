"""What a real run costs, known from --dry-run: GPU hours and spot dollars on each GPU the SkyPilot YAMLs offer.

    GPU hours = pairs trained x seconds a pair on that GPU / 3600

Pairs trained: the run's rows (every row of local data is counted; a Hub dataset's from its metadata, else
DPO_MAX_SAMPLES, else unknown) x the share of the dry run's sample that became pairs, less the eval pairs,
x DPO_NUM_TRAIN_EPOCHS (or DPO_MAX_STEPS x batch x accumulation).

Seconds a pair: a measured throughput where bench/throughput.json has one for this GPU, model and
quantization (`make bench-gpu` on a GPU; scaled to this run's tokens a pair), otherwise an estimate from the
FLOPs of a DPO step at an assumed model FLOPs utilisation (MFU), always labelled with its source. The MFU is an
assumption, not a measurement of this job: 35%, with the hours and dollars it gives at 25% and 45% beside them
(MFU_RANGE), until `make bench-gpu` measures the throughput. FLOPs of one pair, whose chosen and rejected sequences
are each L tokens (the pair's prompt + longer answer: they are padded to a common length), N the decoder's matmul
parameters (the language model without its input embedding table, LM head included):

    decoder     2 sequences x L x N x (2 policy forward + 2 activation gradients + 2 recomputed forward + 2 reference)
    attention   2 sequences x 2 L^2 x width x layers x (1 forward + 2 backward + 1 recomputed + 1 reference)
    vision      images x 2 N_vision x patches an image, once a step (images encoded once)
                images x 2 sequences x N_vision x patches x (the decoder's 2 + 2 + 2 + 2), on TRL's own path

The backward runs through the frozen 4-bit base: it computes activation gradients (2N a token) but no weight
gradients, except LoRA's (r=16 on a 7B: ~0.6% of N, left out); gradient checkpointing (on by default)
recomputes each layer's forward (2N) for its backward, so the policy's side is 2N + 4N = 6N a token, 4N
without checkpointing. The reference model (the base, adapters off) runs forward only. Attention scores are
causal (half of L^2). With images encoded once (DPO_ENCODE_IMAGES_ONCE, the tower frozen: models/encode_once.py)
the tower runs forward once a step for each image, without gradients, its output shared by chosen, rejected and the
reference. On TRL's own path (DPO_ENCODE_IMAGES_ONCE=false, or DPO_LORA_VISION) it runs for both sequences in both
models, and the policy's pass also backward: TRL turns on input gradients for every sub-model's input embeddings,
the tower's patch embedding included, so its activations get gradients (and their checkpointed recomputation) like
the decoder's. Evaluation, data preparation and start-up are not counted.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.models.loading import ModelRef
from entrypoint.planning.memory import checkpointing, images_encoded_once, plan_for_run
from entrypoint.planning.schedule import optimizer_steps
from entrypoint.remote import hub
from entrypoint.remote.refs import is_read_whole

log = logging.getLogger("entrypoint")

ROOT = Path(__file__).resolve().parents[2]  # the checkout (sky/ and bench/ live beside entrypoint/)
THROUGHPUT_TABLE = Path("bench") / "throughput.json"
# The share of the bf16 peak a QLoRA DPO step reaches: assumed, with no source (nothing has measured this job yet),
# so the estimate also gives the range it spans at MFU_RANGE; bench/throughput.json's measurements replace it.
MFU = 0.35
MFU_RANGE = (0.25, 0.45)
DEFAULT_GPUS = ("A100", "A100-80GB", "H100")  # what sky/*.yaml rent today, where the YAMLs are not at hand
VIEWER_SIZE_URL = "https://datasets-server.huggingface.co/size"  # the Hub dataset viewer's row counts


@dataclass(frozen=True)
class Gpu:
    name: str  # SkyPilot's accelerator name
    peak_tflops: float  # bf16 dense tensor-core peak, TFLOP/s
    usable_gib: float  # what the memory plan may fill (plan.GPUS)
    spot_usd: tuple[float, float]  # spot price range, US$ a GPU-hour


# Peaks: NVIDIA's A100 datasheet, BF16 tensor core 312 TFLOP/s dense (624 is with sparsity), the same for the
# 40 GB and 80 GB SXM4 parts; NVIDIA's H100 datasheet, H100 SXM BF16 989 TFLOP/s dense (1,979 with sparsity);
# the clouds' H100s (GCP a3, AWS p5) are SXM. bench/bench_gpu.py uses the same figures for its MFU.
#
# Spot prices: a 1-GPU machine's, lowest and highest region, the GPU's spot price plus its 1-GPU host VM's
# (a2-highgpu-1g, a2-ultragpu-1g, a3-highgpu-1g), from SkyPilot's catalog of GCP prices, which SkyPilot
# refreshes from GCP's pricing: github.com/skypilot-org/skypilot-catalog, catalogs/v7/gcp/vms.csv at commit
# 017e2502fb63, read 2026-11-25. Regions with both a GPU and a host price; asia-northeast1's H100, listed above
# its on-demand price, left out. A100 $1.29 (asia-northeast1) - $1.73 (us-west3), us-central1 $1.44;
# A100-80GB $1.54 (us-east5) - $2.23 (us-east4); H100 $1.98 (us-east4) - $2.55 (asia-southeast1), us-central1
# $2.53. AWS, in the same catalog (catalogs/v7/aws/vms.csv at 001367d22a00), rents these only 8 at a time:
# p4d.24xlarge (A100) $0.53-2.28 a GPU-hour spot, p4de.24xlarge (A100-80GB) $0.73-0.98, p5.48xlarge (H100)
# $1.47-5.01. Spot prices move daily: `sky show-gpus <GPU>` has today's.
GPUS = {gpu.name: gpu for gpu in (
    Gpu("A100", 312.0, 39.4, (1.29, 1.73)),
    Gpu("A100-80GB", 312.0, 79.1, (1.54, 2.23)),
    Gpu("H100", 989.0, 79.1, (1.98, 2.55)),
)}
PRICES_SOURCE = ("spot $ a GPU-hour: GPU + 1-GPU host VM, cheapest to dearest GCP region in SkyPilot's catalog, "
                 "read 2026-11-25 (sources in entrypoint/planning/cost.py)")


# ---- FLOPs

@dataclass(frozen=True)
class ModelSize:
    params: int  # every parameter
    decoder: int  # N: the language model's matmul parameters (input embedding table out, LM head in)
    vision: int  # the vision modules (tower and projector)
    layers: int
    attention_width: int  # query heads x head dim


@dataclass(frozen=True)
class PairFlops:
    decoder: float
    attention: float
    vision: float

    @property
    def total(self) -> float:
        return self.decoder + self.attention + self.vision


def pair_flops(size: ModelSize, length: int, images: float = 0.0, patches_per_image: int = 0,
               checkpointing: bool = True, encode_once: bool = True) -> PairFlops:
    """FLOPs of one DPO pair (chosen and rejected, each `length` tokens) through policy and reference (module doc)."""
    recompute = 1 if checkpointing else 0
    per_token = 2 + 2 + 2 * recompute + 2  # FLOPs a parameter: policy forward, gradients, recompute, reference
    decoder = 2 * length * size.decoder * per_token
    attention = 2 * 2 * length**2 * size.attention_width * size.layers * (1 + 2 + recompute + 1)
    # Encoded once: one forward (2 FLOPs a parameter) an image a step. TRL's path: both sequences, through the
    # policy as the decoder goes (the tower's output requires grad) and through the reference.
    vision = images * patches_per_image * size.vision * (2 if encode_once else 2 * per_token)
    return PairFlops(float(decoder), float(attention), float(vision))


def estimated_pairs_per_second(flops: float, gpu: Gpu, mfu: float = MFU) -> float:
    return gpu.peak_tflops * 1e12 * mfu / flops


def model_size(arch: Any) -> ModelSize:
    """The counts the FLOPs need, from the architecture the memory plan counted (models/architecture.describe)."""
    return ModelSize(arch.params, arch.decoder_params, arch.vision_params, arch.layers, arch.attention_width)


# ---- how many pairs the run trains on

@dataclass(frozen=True)
class RunSize:
    rows: int | None  # rows the run reads (after DPO_MAX_SAMPLES); None: unknown
    rows_source: str
    train_pairs: int | None
    eval_pairs: int | None
    pairs_trained: int | None  # pairs through the model over the whole run (epochs or max steps)
    optimizer_steps: int | None
    schedule: str  # "1 epoch", "DPO_MAX_STEPS=500"


def run_size(total_rows: int | None, rows_source: str, report: dict[str, Any], settings: Any) -> RunSize:
    """The run's pairs from the dataset's row count and the share of the dry run's sample that became pairs."""
    max_samples = settings.max_samples
    if total_rows is not None:
        rows = min(total_rows, max_samples) if max_samples else total_rows
        source = f"{rows_source}; DPO_MAX_SAMPLES={max_samples}" if max_samples and max_samples < total_rows \
            else rows_source
    elif max_samples:
        rows, source = max_samples, "DPO_MAX_SAMPLES (the dataset's size is unknown: at most this many)"
    else:
        rows, source = None, f"unknown ({rows_source}); DPO_MAX_SAMPLES sets it"
    per_step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps  # on one GPU
    train = evaluation = None
    if rows is not None:
        pairs = round(rows * report["pairs"] / max(report["rows_used"], 1))
        evaluation = min(settings.max_eval_pairs, max(1, round(pairs * settings.eval_fraction))) \
            if settings.eval_fraction > 0 and pairs else 0
        train = pairs - evaluation
    if settings.max_steps and settings.max_steps > 0:
        return RunSize(rows, source, train, evaluation, settings.max_steps * per_step, settings.max_steps,
                       f"DPO_MAX_STEPS={settings.max_steps}")
    epochs = settings.num_train_epochs
    schedule = f"{epochs:g} epoch{'s' if epochs != 1 else ''}"
    if train is None:
        return RunSize(rows, source, None, None, None, None, schedule)
    return RunSize(rows, source, train, evaluation, round(train * epochs), optimizer_steps(settings, train), schedule)


def total_rows(ref: str, split: str, report: dict[str, Any], sampled: int) -> tuple[int | None, str]:
    """The split's row count and where it comes from. A dry run reads local data whole; of a Hub dataset it streams
    the first `sampled` rows only, so fewer than that is the whole split, and otherwise the Hub's metadata says."""
    if is_read_whole(ref):
        return report["rows_read"], "every row counted"
    if report["rows_read"] < sampled:
        return report["rows_read"], "the whole split (fewer rows than the sample)"
    rows = hub_rows(ref, split)
    return (rows, "the Hub's metadata") if rows else (None, "no row count in the Hub's metadata")


def hub_rows(ref: str, split: str) -> int | None:
    """The split's rows from the Hub: its dataset card's dataset_info, else the dataset viewer's count; None offline,
    for a sliced split (train[:10%]) or when neither knows."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import build_hf_headers, get_session

    if hub.offline() or "[" in split:
        return None
    token = hub.token()
    try:
        card = HfApi(token=token).dataset_info(ref).card_data
        rows = card_rows(card.to_dict() if card else {}, split)
        if rows:
            return rows
        response = get_session().get(VIEWER_SIZE_URL, params={"dataset": ref}, headers=build_hf_headers(token=token),
                                     timeout=10)
        response.raise_for_status()
        return viewer_rows(response.json(), split)
    except Exception as exc:  # noqa: BLE001 - no network, gated, not converted: the count is just unknown
        log.debug("no row count for %s from the Hub: %s", ref, exc)
        return None


def _default(entries: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The entries of the default config (what load_dataset(ref) reads), or of the only one."""
    named = [e for e in entries if e.get(key, "default") == "default"]
    return named if named else entries if len({e.get(key) for e in entries}) == 1 else []


def card_rows(card: dict[str, Any], split: str) -> int | None:
    infos = card.get("dataset_info") or []
    infos = infos if isinstance(infos, list) else [infos]
    for info in _default(infos, "config_name"):
        for entry in info.get("splits") or []:
            if entry.get("name") == split and entry.get("num_examples"):
                return int(entry["num_examples"])
    return None


def viewer_rows(size: dict[str, Any], split: str) -> int | None:
    splits = _default((size.get("size") or {}).get("splits") or [], "config")
    rows = [int(s["num_rows"]) for s in splits if s.get("split") == split and s.get("num_rows")]
    return rows[0] if len(rows) == 1 else None


# ---- GPUs, measured throughput, the table

def offered_gpus(roots: tuple[Path, ...] = (ROOT, Path.cwd())) -> tuple[list[str], str]:
    """The accelerators the SkyPilot YAMLs ask for (resources.accelerators), in order of appearance."""
    import yaml

    for root in roots:
        paths = sorted((root / "sky").glob("*.yaml"))
        names: list[str] = []
        for path in paths:
            wanted = (yaml.safe_load(path.read_text()) or {}).get("resources", {}).get("accelerators") or {}
            items = wanted if isinstance(wanted, dict) else [wanted] if isinstance(wanted, str) else wanted
            for item in items:
                name = str(item).split(":")[0].strip()
                if name not in names:
                    names.append(name)
        if names:
            return names, "the accelerators of sky/*.yaml"
    return list(DEFAULT_GPUS), "the accelerators sky/*.yaml offered when this was written (no sky/ here)"


def load_measurements(roots: tuple[Path, ...] = (ROOT, Path.cwd())) -> list[dict[str, Any]]:
    """Measured throughputs (bench/throughput.json, filled from bench/RESULTS.md's GPU section); none when absent."""
    for root in roots:
        path = root / THROUGHPUT_TABLE
        if path.is_file():
            return list(json.loads(path.read_text()).get("measurements") or [])
    return []


def measured(entries: list[dict[str, Any]], gpu: str, model: str, quantization: str,
             pair_tokens: int) -> tuple[float, str] | None:
    """Pairs a second on `gpu` from the closest measurement of the same model and quantization, scaled from its
    tokens a pair to this run's (the same tokens a second), with a label naming it; None where there is none."""
    same = [e for e in entries if e.get("gpu") == gpu and e.get("model") == model
            and e.get("quantization", "4bit") == quantization and e.get("pairs_per_second")
            and e.get("pair_tokens_p50")]
    if not same:
        return None
    best = min(same, key=lambda e: abs(math.log(e["pair_tokens_p50"] / pair_tokens)))
    rate = best["pairs_per_second"] * best["pair_tokens_p50"] / pair_tokens
    return rate, (f"measured: {best['pairs_per_second']:g} pairs/s at {best['pair_tokens_p50']:,} tokens a pair "
                  f"({best.get('setting', '')}, {best.get('measured', 'bench/throughput.json')}), scaled")


@dataclass(frozen=True)
class GpuCost:
    gpu: str
    pairs_per_second: float | None  # at the p50 pair
    hours: tuple[float, float] | None  # at the p50 and at the p95 pair (per 1,000 pairs when the count is unknown)
    usd: tuple[float, float] | None
    source: str
    fits: str
    # An estimate's hours and dollars over MFU_RANGE: the p50 pair at the highest MFU and the cheapest price, to the
    # p95 pair at the lowest and the dearest (None for a measured throughput)
    spread: tuple[tuple[float, float], tuple[float, float]] | None = None


def gpu_costs(names: list[str], flops_p50: float, flops_p95: float, pairs: int | None, model: str,
              quantization: str, tokens: tuple[int, int], need_gib: float,
              measurements: list[dict[str, Any]], mfu: float = MFU,
              mfu_range: tuple[float, float] = MFU_RANGE) -> list[GpuCost]:
    """One row per GPU: throughput (measured where bench/throughput.json has it, else estimated), GPU hours, cost."""
    rows = []
    for name in names:
        gpu = GPUS.get(name)
        if gpu is None:
            rows.append(GpuCost(name, None, None, None, "no peak or price recorded in entrypoint/planning/cost.py",
                                "-"))
            continue
        fits = f"yes ({need_gib:.1f} of {gpu.usable_gib:.0f} GiB)" if need_gib <= gpu.usable_gib else \
            f"no ({need_gib:.1f} GiB > {gpu.usable_gib:.0f})"
        found = measured(measurements, name, model, quantization, tokens[0])
        count = pairs if pairs is not None else 1000
        spread = None
        if found:
            rate, source = found
            rate_p95 = rate * tokens[0] / tokens[1]
        else:
            rate = estimated_pairs_per_second(flops_p50, gpu, mfu)
            rate_p95 = estimated_pairs_per_second(flops_p95, gpu, mfu)
            source = (f"estimate: {mfu:.0%} MFU x {gpu.peak_tflops:g} TFLOP/s bf16 (no measurement; the MFU is "
                      "assumed)")
            fast = count / estimated_pairs_per_second(flops_p50, gpu, max(mfu_range)) / 3600
            slow = count / estimated_pairs_per_second(flops_p95, gpu, min(mfu_range)) / 3600
            spread = ((fast, slow), (fast * gpu.spot_usd[0], slow * gpu.spot_usd[1]))
        hours = (count / rate / 3600, count / rate_p95 / 3600)
        usd = (hours[0] * gpu.spot_usd[0], hours[1] * gpu.spot_usd[1])
        rows.append(GpuCost(name, rate, hours, usd, source, fits, spread))
    return rows


def _hours(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:.2f}" if value < 10 else f"${value:,.0f}"


def table(rows: list[GpuCost], per_thousand: bool, mfu_range: tuple[float, float] = MFU_RANGE) -> list[str]:
    """The rows as a Markdown table (one log line each: paste them into the README as they are)."""
    what = "GPU hours a 1,000 pairs" if per_thousand else "GPU hours"
    spread = f"at {min(mfu_range):.0%} - {max(mfu_range):.0%} MFU"
    lines = [f"| GPU | fits the memory plan | pairs/s (p50) | {what} (p50 - p95 pair) | spot $/GPU-hour | "
             f"cost | {spread} | throughput from |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.hours is None:
            lines.append(f"| {row.gpu} | {row.fits} | - | - | - | - | - | {row.source} |")
            continue
        price = GPUS[row.gpu].spot_usd
        ranged = (f"{_hours(row.spread[0][0])} - {_hours(row.spread[0][1])} h, {_usd(row.spread[1][0])} - "
                  f"{_usd(row.spread[1][1])}") if row.spread else "-"
        lines.append(f"| {row.gpu} | {row.fits} | {row.pairs_per_second:,.2f} | {_hours(row.hours[0])} - "
                     f"{_hours(row.hours[1])} | ${price[0]:.2f} - ${price[1]:.2f} | {_usd(row.usd[0])} - "
                     f"{_usd(row.usd[1])} | {ranged} | {row.source} |")
    return lines


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _tflop(flops: float) -> str:
    return f"{flops / 1e12:,.1f}"


def describe(settings: Any, size: ModelSize, run: RunSize, tokens: tuple[int, int], images: float, patches: int,
             flops: PairFlops, rows: list[GpuCost], model: str, gpus_source: str) -> list[str]:
    """The estimate as log lines: what it counts, then the table."""
    step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    if run.pairs_trained is None:
        pairs = f"rows {run.rows_source}: the table is per 1,000 pairs"
    elif run.rows is None:  # DPO_MAX_STEPS, the dataset's size unknown
        pairs = (f"{run.schedule}: {run.pairs_trained:,} pairs trained in {run.optimizer_steps:,} optimizer steps of "
                 f"{step} pairs (rows {run.rows_source})")
    else:
        pairs = (f"{run.rows:,} rows ({run.rows_source}) -> {run.train_pairs:,} train pairs + {run.eval_pairs:,} "
                 f"eval; {run.schedule}: {run.pairs_trained:,} pairs trained in {run.optimizer_steps:,} optimizer "
                 f"steps of {step} pairs")
    vision = f"; {images:g} image a pair, up to {patches:,} vision patches an image" if images else ""
    recompute = " + 2 recomputed forward" if checkpointing(settings) else ""
    tower = ("each image encoded once a step" if images_encoded_once(settings) else
             "TRL's own path: both sequences, through the policy forward and backward and the reference")
    return [
        f"cost estimate for {model}, {settings.quantization}, one GPU, spot:",
        f"  pairs: {pairs}",
        f"  tokens a pair (prompt + longer answer; chosen and rejected padded to it): p50 {tokens[0]:,}, "
        f"p95 {tokens[1]:,}{vision}",
        f"  model: {_count(size.params)} parameters: decoder N = {_count(size.decoder)} (input embeddings left out), "
        f"vision {_count(size.vision)}",
        f"  FLOPs a pair at p50: {_tflop(flops.total)} TFLOP = decoder {_tflop(flops.decoder)} (2 sequences x tokens "
        f"x N x (2 policy forward + 2 activation gradients{recompute} + 2 reference)) + attention "
        f"{_tflop(flops.attention)} + vision {_tflop(flops.vision)} ({tower})",
        *table(rows, run.pairs_trained is None),
        f"  {PRICES_SOURCE}; GPUs: {gpus_source}; training steps only (data preparation, evaluation and start-up "
        "not counted); on N GPUs about the same GPU hours in 1/N of the time",
    ]


def log_cost(settings: JobSettings, model_ref: ModelRef, processor: Any, report: dict[str, Any], sampled: int,
             rows: tuple[int, str] | None = None) -> list[str]:
    """--dry-run: log (and return) the cost estimate of the run these settings describe, for the model a `shapes:`
    model stands for at full size. `sampled`: the rows the dry run read; `rows`: a known row count and its source,
    instead of finding it."""
    tokens_report = report.get("tokens")
    if not tokens_report:
        log.info("cost estimate: no tokens measured, nothing to estimate from")
        return []
    published = bool(model_ref.stands_for)
    model = model_ref.stands_for or settings.model
    arch, plan, _ = plan_for_run(settings, model_ref, processor, tokens_report, published=published)
    size = model_size(arch)
    pair = tokens_report["pair_tokens"]
    tokens = (pair["p50"], pair["p95"])
    images = plan.workload.images_per_pair
    patches = arch.vision_patches * plan.workload.tiles_per_image
    count, source = rows if rows else total_rows(settings.dataset, settings.dataset_split, report, sampled)
    run = run_size(count, source, report, settings)
    at = [pair_flops(size, n, images, patches, checkpointing(settings), plan.workload.encode_images_once)
          for n in tokens]
    names, gpus_source = offered_gpus()
    costs = gpu_costs(names, at[0].total, at[1].total, run.pairs_trained, model, settings.quantization, tokens,
                      plan.with_context, load_measurements())
    lines = describe(settings, size, run, tokens, images, patches, at[0], costs,
                     model + (" (at full size: the checkpoint this shapes: model stands for)" if published else ""),
                     gpus_source)
    for line in lines:
        log.info(line)
    return lines
