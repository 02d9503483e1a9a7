"""The adapter's model card (adapter/README.md): Hub metadata, what was trained, how it did, how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from entrypoint.settings import JobSettings

_CARD_SETTINGS = ("quantization", "lora_r", "lora_alpha", "lora_dropout", "beta", "loss_type", "learning_rate",
                  "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                  "max_length", "seed")
_CARD_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _metadata(settings: JobSettings, model: Any) -> dict[str, Any]:
    tags = ["trl", "dpo", "lora", model.family.name]
    if settings.quantization == "4bit":
        tags.append("qlora")
    meta: dict[str, Any] = {"library_name": "peft", "tags": tags}
    if model.source == settings.model:  # a Hub id; the Hub rejects local paths as base_model
        meta = {"base_model": settings.model, **meta}
    if not settings.dataset.startswith(("sample:", "/", ".", "s3://")):
        meta["datasets"] = [settings.dataset]
    return meta


def _metrics_table(before: dict[str, float], after: dict[str, float]) -> list[str]:
    if not after:
        return ["No evaluation split (DPO_EVAL_FRACTION=0)."]
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key in _CARD_METRICS:
        if key in after:
            lines.append(f"| {key} | {before.get(key, float('nan')):.4f} | {after[key]:.4f} |")
    return lines


def _plots_section(plots: list[str]) -> list[str]:
    """Relative links: the PNGs travel in the adapter folder (plots/), to the Hub too."""
    if not plots:
        return []
    return ["## Training curves", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]


def render(settings: JobSettings, model: Any, report: dict[str, Any], metrics: dict[str, Any],
           plots: list[str] = ()) -> str:
    values = settings.model_dump(mode="json")
    loader = "AutoModelForCausalLM" if not model.family.vision else model.family.model_class
    processor = "AutoProcessor" if model.family.vision else "AutoTokenizer"
    lines = [
        "---", yaml.safe_dump(_metadata(settings, model), sort_keys=False).strip(), "---", "",
        f"# DPO LoRA adapter for {settings.model}", "",
        f"Trained with DPO ({', '.join(values['loss_type'])}) on `{settings.dataset}` "
        f"({report.get('train_pairs')} train / {report.get('eval_pairs')} eval pairs, format "
        f"`{report.get('format')}`), {metrics['train']['global_step']} steps.", "",
        "## Settings", "", "| setting | value |", "|---|---|",
        *(f"| `{name}` | `{values[name]}` |" for name in _CARD_SETTINGS if name in values), "",
        "## Evaluation (held-out pairs)", "",
        "Before = the base model (at step 0 the policy equals the reference, so its rewards are 0).", "",
        *_metrics_table(metrics.get("eval_before", {}), metrics.get("eval_after", {})), "",
        *_plots_section(plots),
        "## How to load", "",
        "```python",
        f"from transformers import {loader}, {processor}",
        "from peft import PeftModel", "",
        f'base = {loader}.from_pretrained("{model.source}")',
        'model = PeftModel.from_pretrained(base, "<this repo or folder>")',
        f'processor = {processor}.from_pretrained("<this repo or folder>")',
        "```", "",
    ]
    return "\n".join(lines)


def write_model_card(adapter_dir: Path, settings: JobSettings, model: Any, report: dict[str, Any],
                     metrics: dict[str, Any], plots: list[str] = ()) -> Path:
    path = adapter_dir / "README.md"
    path.write_text(render(settings, model, report, metrics, plots))
    return path
