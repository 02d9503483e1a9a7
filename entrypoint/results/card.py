"""The adapter's model card (adapter/README.md): Hub metadata, what was trained, how it did, how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from entrypoint.config.settings import JobSettings
from entrypoint.evaluation.comparison import YES_NO_ROWS, number
from entrypoint.models.loading import ModelRef
from entrypoint.run.record import card_subset

_CARD_SETTINGS = ("quantization", "lora_r", "lora_alpha", "lora_dropout", "beta", "loss_type", "learning_rate",
                  "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                  "max_length", "seed")


def _metadata(settings: JobSettings, model: ModelRef, record: dict[str, Any] | None = None) -> dict[str, Any]:
    tags = ["trl", "dpo", "lora", model.family.name]
    if settings.quantization == "4bit":
        tags.append("qlora")
    meta: dict[str, Any] = {"library_name": "peft", "tags": tags}
    if model.source == settings.model:  # a Hub id; the Hub rejects local paths as base_model
        meta = {"base_model": settings.model, **meta}
    if not settings.dataset.startswith(("sample:", "/", ".", "s3://")):
        meta["datasets"] = [settings.dataset]
    if record:  # what made it: base revision, data fingerprints, code (the whole record: manifest.json)
        meta["provenance"] = card_subset(record)
    return meta


def _metrics_table(rows: list[dict[str, Any]]) -> list[str]:
    """metrics.json's "comparison": base model (adapter off) against the tuned one, on the held-out pairs."""
    if not rows:
        return ["No evaluation split (DPO_EVAL_FRACTION=0)."]
    lines = ["| metric | base | tuned | pairs or questions |", "|---|---|---|---|"]
    lines += [f"| {row['metric']} | {number(row['base'])} | {number(row['tuned'])} | {row['count'] or ''} |"
              for row in rows]
    notes: dict[str, list[str]] = {}  # a note once, after every metric it explains
    for row in rows:
        if row["note"] and not row["metric"].startswith("DPO"):
            notes.setdefault(row["note"], []).append(row["metric"])
    step0 = next((row["note"] for row in rows if row["metric"].startswith("DPO")), None)
    return [*lines, "", *(f"- {', '.join(metrics)}: {note}" for note, metrics in notes.items()),
            *([f"- DPO rows, {step0}"] if step0 else [])]


def _yes_no_table(yes_no: dict[str, Any]) -> list[str]:
    """metrics.json's "yes_no": POPE's figures base -> tuned, overall and by category."""
    if not yes_no:
        return []
    header = " | ".join(label.removeprefix("yes/no").strip(" :") for label in YES_NO_ROWS.values())
    lines = ["### Yes/no questions", "",
             f"{yes_no['questions']} questions, each answered by the more probable of the model's yes and no tokens "
             "after the prompt (one forward pass a question, no sampling); yes is the positive class. Base -> tuned:",
             "", f"| category | questions | {header} |", "|---|---|" + "---|" * len(YES_NO_ROWS)]
    for name, part in [("all", yes_no), *yes_no.get("categories", {}).items()]:
        cells = " | ".join(f"{number(part['base'][key])} -> {number(part['tuned'][key])}" for key in YES_NO_ROWS)
        lines.append(f"| {name} | {part['questions']} | {cells} |")
    return [*lines, ""]


def _evaluated_on(report: dict[str, Any]) -> str:
    eval_set = report.get("eval_set")
    if eval_set:
        return (f"the eval set `{eval_set.get('source')}` ({report.get('eval_pairs')} pairs, format "
                f"`{eval_set.get('format')}`); the training data was not split")
    split = report.get("split")
    if split:
        return (f"{split['eval']['pairs']} held-out pairs of the training data, split by image and prompt "
                f"({split['shared']['images']} images and {split['shared']['prompts']} prompts also in training)")
    return "the held-out pairs"


def _data_section(report: dict[str, Any]) -> list[str]:
    """What went in, and what was left out and why: a reader must know when the data was not all used."""
    lines = ["## Data", "",
             f"`{report.get('source')}`: {report.get('rows_used')} of {report.get('rows_read')} rows used, "
             f"{report.get('pairs')} pairs ({report.get('train_pairs')} train, {report.get('eval_pairs')} eval).", ""]
    dropped = report.get("dropped") or {}
    if dropped:
        lines += ["Rows dropped:", "", *(f"- {count}: {reason}" for reason, count in dropped.items()), ""]
    else:
        lines += ["No rows were dropped.", ""]
    if eval_set := report.get("eval_set"):
        dropped = eval_set.get("dropped") or {}
        lines += [f"Eval set `{eval_set.get('source')}` (format `{eval_set.get('format')}`): "
                  f"{eval_set.get('rows_used')} of {eval_set.get('rows_read')} rows used, {eval_set.get('pairs')} "
                  "pairs" + (f"; dropped: {', '.join(f'{n} {reason}' for reason, n in dropped.items())}." if dropped
                             else "."), ""]
    tokens = report.get("tokens")
    if tokens:
        pair, image = tokens["pair_tokens"], tokens["image_tokens_per_image"]
        lines += [f"Tokens a pair (prompt + the longer answer): p50 {pair['p50']}, p95 {pair['p95']}, max "
                  f"{pair['max']}, with `max_length` {tokens['max_length']}"
                  + (f"; {tokens['answers_cut']} pairs had an answer cut by it." if tokens["answers_cut"] else ".")]
        if image["images"]:
            lines.append(f"Tokens an image: p50 {image['p50']}, p95 {image['p95']}, max {image['max']}.")
        lines.append("")
    return lines


def _plots_section(plots: list[str]) -> list[str]:
    """Relative links: the PNGs travel in the adapter folder (plots/), to the Hub too."""
    if not plots:
        return []
    return ["## Training curves", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]


def render(settings: JobSettings, model: ModelRef, report: dict[str, Any], metrics: dict[str, Any],
           plots: list[str] = (), load_kwargs: dict[str, Any] | None = None,
           record: dict[str, Any] | None = None) -> str:
    """`load_kwargs`: config values the base model needs to match this adapter's processor (the image
    grid DPO_MAX_IMAGE_TILES chose); `record`: the run record (run/record.py), a subset goes in the metadata."""
    values = settings.model_dump(mode="json")
    loader = "AutoModelForCausalLM" if not model.family.vision else model.family.model_class
    processor = "AutoProcessor" if model.family.vision else "AutoTokenizer"
    extra = "".join(f", {key}={value!r}" for key, value in (load_kwargs or {}).items())
    lines = [
        "---", yaml.safe_dump(_metadata(settings, model, record), sort_keys=False).strip(), "---", "",
        f"# DPO LoRA adapter for {settings.model}", "",
        f"Trained with DPO ({', '.join(values['loss_type'])}) on `{settings.dataset}` "
        f"({report.get('train_pairs')} train / {report.get('eval_pairs')} eval pairs, format "
        f"`{report.get('format')}`), {metrics['train']['global_step']} steps.", "",
        "## Settings", "", "| setting | value |", "|---|---|",
        *(f"| `{name}` | `{values[name]}` |" for name in _CARD_SETTINGS if name in values), "",
        "## Evaluation", "",
        f"On {_evaluated_on(report)}. Base = the base model (this adapter switched off); tuned = with this adapter. "
        "The full report, with the curves and sample answers side by side: [report.html](report.html).", "",
        *_metrics_table(metrics.get("comparison") or []), "",
        *_yes_no_table(metrics.get("yes_no") or {}),
        *_data_section(report),
        *_plots_section(plots),
        *_how_to_load(settings, model, loader, processor, extra),
    ]
    return "\n".join(lines)


def _how_to_load(settings: JobSettings, model: ModelRef, loader: str, processor: str, extra: str) -> list[str]:
    """Base + adapter with PEFT always; the merged model too when the run wrote one (DPO_MERGE=1)."""
    lines = [
        "## How to load", "",
        "The base model with this adapter (PEFT):", "",
        "```python",
        f"from transformers import {loader}, {processor}",
        "from peft import PeftModel", "",
        *(["# the image grid this adapter was trained with (DPO_MAX_IMAGE_TILES), as in its processor"]
          if extra else []),
        f'base = {loader}.from_pretrained("{model.source}"{extra})',
        'model = PeftModel.from_pretrained(base, "<this repo or folder>")',
        f'processor = {processor}.from_pretrained("<this repo or folder>")',
        "```", "",
        *_processor_notes(settings, model),
    ]
    if settings.merge:
        dequantized = f"the {settings.quantization} base dequantized first, " if settings.quantization != "none" else ""
        lines += [
            "The merged model, no PEFT needed: the run also wrote this adapter merged into the base model "
            f"({dequantized}bf16 weights) to `merged/` in its run directory, beside `adapter/`, with its config and "
            "processor files; it travels with the run directory (to `DPO_S3_URI` when set), while a Hub repo "
            "holds the adapter only:", "",
            "```python",
            "import torch",
            f"from transformers import {loader}, {processor}", "",
            f'model = {loader}.from_pretrained("<run directory>/merged", dtype=torch.bfloat16)',
            f'processor = {processor}.from_pretrained("<run directory>/merged")',
            "```", "",
        ]
    return lines


def _processor_notes(settings: JobSettings, model: ModelRef) -> list[str]:
    """What a user's own code must do to see images as this adapter was trained to."""
    notes = []
    if model.family.image_only_processor:
        notes.append(f"`AutoProcessor` loads {model.family.name}'s video processor too, which needs `torchvision`.")
    if model.family.tiling == "pan-and-scan" and (settings.max_image_tiles or 0) >= 2:
        notes.append(f"Trained with pan-and-scan (`DPO_MAX_IMAGE_TILES={settings.max_image_tiles}`): transformers does "
                     "not reload that setting, so call the processor with `do_pan_and_scan=True, "
                     f"pan_and_scan_max_num_crops={settings.max_image_tiles}`.")
    if settings.image_max_pixels and model.family.tiling == "dynamic":
        notes.append(f"Trained with images of at most {settings.image_max_pixels:,} pixels "
                     "(`DPO_IMAGE_MAX_PIXELS`): the saved processor keeps that `max_pixels`.")
    return [*notes, ""] if notes else []


def write_model_card(adapter_dir: Path, settings: JobSettings, model: ModelRef, report: dict[str, Any],
                     metrics: dict[str, Any], plots: list[str] = (), load_kwargs: dict[str, Any] | None = None,
                     record: dict[str, Any] | None = None) -> Path:
    path = adapter_dir / "README.md"
    path.write_text(render(settings, model, report, metrics, plots, load_kwargs, record))
    return path
