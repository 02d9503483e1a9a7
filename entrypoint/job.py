"""One run of the job, top to bottom: check -> data -> model -> train -> evaluate -> save.

Everything a user can get wrong is checked before the model is loaded, so a bad setting costs
seconds, not GPU hours.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint import outputs
from entrypoint.errors import ConfigError
from entrypoint.settings import JobSettings, public_dict

log = logging.getLogger("entrypoint")


@dataclass(frozen=True)
class RunPaths:
    run_name: str
    output_dir: Path
    checkpoint_dir: Path
    cache_dir: Path

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / outputs.ADAPTER_DIR


def _slug(ref: str) -> str:
    tail = ref.rstrip("/").replace(":", "-").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.") or "run"


def run_paths(settings: JobSettings) -> RunPaths:
    run_name = settings.run_name or f"{_slug(settings.model)}-{_slug(settings.dataset)}"[:96]
    output_dir = (settings.output_dir or Path("outputs") / run_name).expanduser().resolve()
    checkpoint_dir = (settings.checkpoint_dir or output_dir / "checkpoints").expanduser().resolve()
    return RunPaths(run_name, output_dir, checkpoint_dir, settings.cache_dir.expanduser().resolve())


def preflight(settings: JobSettings, paths: RunPaths) -> Any:
    """Checks that need no model weights: model and data references. Returns the resolved model."""
    from entrypoint.data.sources import check_source
    from entrypoint.models.loading import resolve_model

    model = resolve_model(settings.model, settings.model_family, settings.model_revision, paths.cache_dir)
    check_source(settings.dataset)
    return model


def training_args(settings: JobSettings, paths: RunPaths) -> Any:
    """DPOConfig; an invalid combination of DPO_* settings is a config error, found before loading."""
    from entrypoint.train import dpo_config

    try:
        return dpo_config(settings, paths.checkpoint_dir, paths.run_name)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training settings: {str(exc).splitlines()[0]}") from None


@dataclass(frozen=True)
class RunResult:
    paths: RunPaths
    metrics: dict[str, Any]

    def summary(self) -> str:
        """What a person wants at the end of the log: where the results are and how it went."""
        train, after = self.metrics["train"], self.metrics["eval_after"]
        lines = [f"done: {self.paths.run_name}",
                 f"  adapter:  {self.paths.adapter_dir}",
                 f"  manifest: {self.paths.output_dir / outputs.MANIFEST}",
                 f"  steps {train['global_step']}, train loss {train.get('train_loss', float('nan')):.4f}, "
                 f"{train['wall_seconds']:.1f} s"]
        if after:
            lines.append(f"  eval: loss {after['loss']:.4f}, reward accuracy {after['rewards/accuracies']:.3f}, "
                         f"reward margin {after['rewards/margins']:.4f}")
        return "\n".join(lines)


def run(settings: JobSettings, dry_run: bool = False) -> RunResult | None:
    """The whole job; returns where the results are and the metrics written (None for a dry run)."""
    paths = run_paths(settings)
    log.info("run %s -> %s", paths.run_name, paths.output_dir)

    # ---- checks (no weights loaded)
    model_ref = preflight(settings, paths)
    args = training_args(settings, paths)
    log.info("model %s (%s), dataset %s", model_ref.source, model_ref.family.name, settings.dataset)
    if dry_run:
        log.info("dry run: settings, model and dataset are fine")
        return None

    # ---- data
    from entrypoint.data.budget import PromptLength
    from entrypoint.data.images import size_limit
    from entrypoint.data.prepare import prepare
    from entrypoint.models.loading import load_model, load_processor

    processor = load_processor(model_ref)
    vision = model_ref.family.vision
    data = prepare(settings.dataset, settings.dataset_split, fmt_name=settings.dataset_format,
                   column_spec=settings.dataset_columns, seed=settings.seed, max_samples=settings.max_samples,
                   eval_fraction=settings.eval_fraction, max_eval_pairs=settings.max_eval_pairs,
                   limit=size_limit(processor.image_processor) if vision else None, cache_dir=paths.cache_dir,
                   prompt_length=PromptLength(processor) if vision else None, max_length=args.max_length)
    if "images" in data.train.column_names and not vision:
        raise ConfigError(f"DPO_DATASET={settings.dataset} has images but DPO_MODEL={settings.model} is text-only")
    outputs.write_json(paths.output_dir / outputs.DATA_REPORT, data.report)
    log.info("data: %s", data.report)

    # ---- model and trainer
    from entrypoint.evaluate import reward_metrics, sample_generations
    from entrypoint.train import build_trainer

    model = load_model(model_ref, settings.quantization)
    trainer = build_trainer(settings, model, model_ref.family, processor, data.train, data.eval, args)

    # ---- train and evaluate
    before = reward_metrics(trainer)
    started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - started
    after = reward_metrics(trainer)
    samples = sample_generations(trainer.model, processor, data.eval, settings.eval_generations) \
        if data.eval is not None else []

    # ---- save: adapter, metrics, config, then the manifest last
    trainer.save_model(str(paths.adapter_dir))
    outputs.remove_unpublished(paths.adapter_dir)
    metrics = {"train": {**result.metrics, "global_step": result.global_step, "wall_seconds": train_seconds},
               "eval_before": before, "eval_after": after, "history": trainer.state.log_history,
               "samples": samples}
    from entrypoint.card import write_model_card

    write_model_card(paths.adapter_dir, settings, model_ref, data.report, metrics)
    outputs.write_json(paths.output_dir / outputs.METRICS, metrics)
    outputs.write_json(paths.output_dir / outputs.CONFIG, {"run_name": paths.run_name, **public_dict(settings),
                                                          "dpo_config": args.to_dict()})
    outputs.write_manifest(paths.output_dir, paths.run_name, exclude=(paths.checkpoint_dir,))
    return RunResult(paths, metrics)
