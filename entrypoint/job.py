"""One run of the job, top to bottom: check -> data -> model -> train -> evaluate -> save.

Everything a user can get wrong is checked before the model is loaded, so a bad setting costs
seconds, not GPU hours.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint import outputs
from entrypoint.errors import ConfigError, Preempted
from entrypoint.settings import JobSettings, public_dict
from entrypoint.state import RunState

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
    """Checks that need no model weights: model, data, publishing destinations. Returns the model."""
    from entrypoint.data.sources import check_image_dir, check_source
    from entrypoint.models.loading import resolve_model

    outputs.check_writable(paths.output_dir, "DPO_OUTPUT_DIR")
    outputs.check_writable(paths.checkpoint_dir, "DPO_CHECKPOINT_DIR")
    outputs.check_writable(paths.cache_dir, "DPO_CACHE_DIR")
    model = resolve_model(settings.model, settings.model_family, settings.model_revision, paths.cache_dir)
    check_source(settings.dataset, settings.dataset_revision)
    check_image_dir(settings.image_dir)
    if settings.s3_uri:
        from entrypoint.publish.s3_upload import check_destination

        check_destination(settings.s3_uri, paths.run_name, settings.overwrite)
    if settings.hub_repo:
        from entrypoint.publish.hub import check_hub

        check_hub(settings.hub_repo)
    return model


def training_args(settings: JobSettings, paths: RunPaths, family: Any) -> Any:
    """DPOConfig; an invalid combination of DPO_* settings (for this model family too) is a config error,
    found before loading."""
    from entrypoint.train import check_trained_modules, check_vision_args, dpo_config

    try:
        args = dpo_config(settings, paths.checkpoint_dir, paths.run_name)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training settings: {str(exc).splitlines()[0]}") from None
    check_vision_args(args, family)
    check_trained_modules(settings, family)
    return args


DRY_RUN_ROWS = 200  # rows a dry run measures: enough for p95 token lengths, seconds to prepare


def plan_from_a_sample(settings: JobSettings, paths: RunPaths, model_ref: Any, args: Any) -> None:
    """--dry-run: the processor, a sample of the data measured as the run will measure it (token
    lengths, drops), and the memory plan from them; no weights are loaded."""
    from entrypoint.cost import log_cost
    from entrypoint.data.stage import log_data_report, prepare_pairs
    from entrypoint.models.loading import load_processor
    from entrypoint.plan import check_memory

    processor = load_processor(model_ref, settings.max_image_tiles, settings.image_max_pixels)
    rows = min(settings.max_samples or DRY_RUN_ROWS, DRY_RUN_ROWS)
    data = prepare_pairs(settings, paths.cache_dir, processor, model_ref.family, args.max_length, max_samples=rows,
                         peek=True)
    log_data_report(data.report, sample=True)
    check_memory(settings, model_ref, processor, data.report)
    log_cost(settings, model_ref, processor, data.report, sampled=rows)


@dataclass(frozen=True)
class RunResult:
    paths: RunPaths
    metrics: dict[str, Any]
    published: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """What a person wants at the end of the log: where the results are, base vs tuned, where they went."""
        from entrypoint.evaluate import comparison_lines

        train, after = self.metrics["train"], self.metrics["eval_after"]
        lines = [f"done: {self.paths.run_name}",
                 f"  report:   {self.paths.output_dir / outputs.REPORT}",
                 f"  adapter:  {self.paths.adapter_dir}",
                 f"  manifest: {self.paths.output_dir / outputs.MANIFEST}",
                 f"  steps {train['global_step']}, train loss {train.get('train_loss', float('nan')):.4f}, "
                 f"{train['wall_seconds']:.1f} s"]
        if after:
            lines.append(f"  eval: loss {after['loss']:.4f}, reward accuracy {after['rewards/accuracies']:.3f}, "
                         f"reward margin {after['rewards/margins']:.4f}")
        if self.metrics.get("comparison"):
            lines += ["base vs tuned (eval pairs):", *comparison_lines(self.metrics["comparison"])]
        for kind, record in self.published.items():
            lines.append(f"  published ({kind}): {record.get('url') or record['to']}")  # the Hub's commit, or S3's URI
        return "\n".join(lines)


def run(settings: JobSettings, dry_run: bool = False, recorded: Any = None) -> RunResult | None:
    """The whole job; returns where the results are and the metrics written (None for a dry run).

    Restartable: stages recorded in `state.json` beside the checkpoints are not repeated, and
    training resumes from the newest complete checkpoint. `recorded`: the run `--from-run` repeats
    (rerun.py), whose base model and data this one must match.
    """
    paths = run_paths(settings)
    log.info("run %s -> %s", paths.run_name, paths.output_dir)

    # ---- checks (no weights loaded)
    model_ref = preflight(settings, paths)
    args = training_args(settings, paths, model_ref.family)
    ranks = _ranks()
    with ranks.main_process_first():  # rank 0 may wipe old state (DPO_RESUME=never) before others read it
        state = RunState.open(paths.checkpoint_dir, settings, writer=ranks.is_main_process)
    log.info("model %s (%s), dataset %s", model_ref.source, model_ref.family.name, settings.dataset)
    if dry_run:
        plan_from_a_sample(settings, paths, model_ref, args)
        log.info("dry run: settings, model, data and memory plan are fine")
        return None

    manifest = paths.output_dir / outputs.MANIFEST
    if state.done("results") and manifest.is_file():
        log.info("results already complete in %s", paths.output_dir)
        if settings.merge and not (paths.output_dir / outputs.MERGED_DIR).is_dir():
            log.warning("DPO_MERGE=1, but this run finished without merged/; DPO_RESUME=never runs it again, merged")
        metrics = json.loads((paths.output_dir / outputs.METRICS).read_text())
    else:
        if ranks.is_main_process:
            manifest.unlink(missing_ok=True)  # whatever is there now is not a complete run
        metrics = train_and_evaluate(settings, paths, model_ref, args, state, ranks, recorded)
        state.mark("results")
    if not ranks.is_main_process:
        return None
    published = state.get("published") or {}
    todo = unpublished(destinations(settings), published)
    if todo:
        published = {**published, **publish(settings, paths, todo)}
        state.mark("published", published)
    return RunResult(paths, metrics, published)


def destinations(settings: JobSettings) -> dict[str, str]:
    """Where this run goes, by publisher: {"s3": DPO_S3_URI, "hub": DPO_HUB_REPO}, those that are set."""
    return {kind: where for kind, where in (("s3", settings.s3_uri), ("hub", settings.hub_repo)) if where}


def unpublished(wanted: dict[str, str], published: dict[str, Any]) -> dict[str, str]:
    """The destinations not yet published to. A destination added or changed after the run finished is
    published then (the destinations are not among the settings a restart compares), without retraining."""
    def done_to(record: Any) -> str | None:
        return record.get("to") if isinstance(record, dict) else None

    return {kind: where for kind, where in wanted.items() if done_to(published.get(kind)) != where}


def publish(settings: JobSettings, paths: RunPaths, todo: dict[str, str]) -> dict[str, Any]:
    """Upload the finished run to each destination in `todo`; each publisher is idempotent."""
    done: dict[str, Any] = {}
    if "s3" in todo:
        from entrypoint.publish.s3_upload import upload_run

        done["s3"] = {"to": todo["s3"], **upload_run(paths.output_dir, todo["s3"], settings.overwrite)}
    if "hub" in todo:
        from entrypoint.publish.hub import publish_adapter

        url = publish_adapter(paths.adapter_dir, todo["hub"], settings.hub_private, paths.run_name)
        done["hub"] = {"to": todo["hub"], "url": url}
        log.info("hub: %s", url)
    return done


def _ranks() -> Any:
    """This process's place among the ranks (one process: rank 0 of 1). Only rank 0 writes results,
    uploads and reports; the others train and evaluate with it."""
    from accelerate import PartialState

    return PartialState()


def train_and_evaluate(settings: JobSettings, paths: RunPaths, model_ref: Any, args: Any, state: RunState,
                       ranks: Any, recorded: Any = None) -> dict[str, Any]:
    """Data, model, training (resumed where checkpoints exist), evaluation; rank 0 writes the results."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from entrypoint import checkpoints
    from entrypoint.data.formats import FORMATS
    from entrypoint.data.stage import log_data_report, prepared_data
    from entrypoint.evaluate import eval_schedule, evaluate_trained, log_eval_cost, reward_metrics, with_step0
    from entrypoint.logs import ProgressLogCallback
    from entrypoint.models.image_tokens import model_overrides
    from entrypoint.models.loading import load_model, load_processor
    from entrypoint.plan import as_dict, check_memory, peak_allocated_gib
    from entrypoint.provenance import run_record
    from entrypoint.rerun import check_drift
    from entrypoint.tracking import SettingsToWandb, setup_wandb
    from entrypoint.train import build_trainer

    # ---- data and the memory plan (checked before the model is loaded: a problem costs no GPU time)
    processor = load_processor(model_ref, settings.max_image_tiles, settings.image_max_pixels)
    with ranks.main_process_first():  # rank 0 prepares and saves; the others then load what it saved
        data = prepared_data(settings, paths.cache_dir, state, processor, model_ref.family, args.max_length)
    log_data_report(data.report)
    made_of = run_record(settings, model_ref, data, paths.cache_dir, ranks.num_processes)  # manifest's provenance
    if recorded:  # --from-run: the recorded base model and data, or exit 2 (DPO_ALLOW_DRIFT=1: a warning)
        check_drift(recorded, made_of, settings)
    plan = check_memory(settings, model_ref, processor, data.report)

    # ---- model and trainer
    set_seed(settings.seed)
    with ranks.main_process_first():
        if ranks.is_main_process:
            checkpoints.remove_incomplete(paths.checkpoint_dir)
        resume_from = checkpoints.latest_complete(paths.checkpoint_dir)
    callback = checkpoints.CheckpointCallback(paths.checkpoint_dir, settings.save_total_limit, resume_from)
    callbacks = [callback, ProgressLogCallback()]
    if settings.report_to == "wandb":
        setup_wandb(paths.run_name)
        callbacks.append(SettingsToWandb(public_dict(settings), made_of))
    eval_every = eval_schedule(settings, args, data.report["train_pairs"], data.report["eval_pairs"],
                               ranks.num_processes)
    model = load_model(model_ref, settings.quantization, settings.distributed, processor)
    trainer = build_trainer(settings, model, model_ref.family, processor, data.train, data.eval, args, callbacks)
    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; ProgressLogCallback logs instead

    # ---- train (resuming when a previous attempt left checkpoints) and evaluate
    # Evaluated on every attempt, resumed ones too: an evaluation before training changes the
    # numerics of the steps after it, so an exact resume must repeat it. At step 0 the policy is
    # the reference, so the result is the same every time.
    before = reward_metrics(trainer)
    log_eval_cost(before, args, data.report, eval_every, ranks.num_processes)
    if resume_from:
        log.info("resuming from %s", resume_from)
    start_collecting_garbage()
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - started
    if callback.preempted:
        raise Preempted(f"stopped at step {result.global_step} by SIGTERM; checkpoint saved in "
                        f"{paths.checkpoint_dir}")
    trainer.save_model(str(paths.adapter_dir))  # every rank: sharded strategies gather the weights
    evaluated = evaluate_trained(trainer, processor, data.eval, before=before, generations=settings.eval_generations,
                                 ground_truth=FORMATS[data.report["format"]].ground_truth, run_dir=paths.output_dir,
                                 is_main=ranks.is_main_process)
    if not ranks.is_main_process:
        return {}
    metrics = {"train": {**result.metrics, "global_step": result.global_step, "wall_seconds": train_seconds,
                         "resumed_from": resume_from.name if resume_from else None},
               "memory": {"plan": as_dict(plan), "peak_allocated_gib": peak_allocated_gib()},
               "eval_before": before, **evaluated, "history": with_step0(before, trainer.state.log_history)}
    if settings.report_to == "wandb":
        from entrypoint.tracking import log_evaluation

        log_evaluation(metrics["comparison"], metrics["samples"], paths.output_dir)
    load_kwargs = model_overrides(model_ref.family, processor) if settings.max_image_tiles else {}
    shutil.rmtree(paths.output_dir / outputs.MERGED_DIR, ignore_errors=True)  # an earlier attempt's, not this adapter's
    if settings.merge:  # the training model's memory goes back first: the merge loads the base again
        from entrypoint.merge import free_memory, write_merged

        del trainer, model
        free_memory()
        write_merged(paths.adapter_dir, model_ref, settings, processor, paths.output_dir / outputs.MERGED_DIR)
    write_results(settings, paths, model_ref, args, data.report, metrics, load_kwargs, made_of)
    return metrics


def start_collecting_garbage() -> None:
    """Start-up ran with Python's garbage collector paused (__main__): what it left behind goes now, what lives on
    (modules, the model, the data) is frozen out of later collections, and collecting resumes for training."""
    gc.collect()
    gc.freeze()
    gc.enable()


def write_results(settings: JobSettings, paths: RunPaths, model_ref: Any, args: Any, report: dict[str, Any],
                  metrics: dict[str, Any], load_kwargs: dict[str, Any] | None = None,
                  provenance: dict[str, Any] | None = None) -> None:
    """Rank 0, after the adapter is saved: plots, card, report, data report, metrics, config; the manifest last."""
    from entrypoint.card import write_model_card
    from entrypoint.plots import write_plots
    from entrypoint.presets import sources
    from entrypoint.report import write_report

    outputs.remove_unpublished(paths.adapter_dir)
    plots = write_plots(metrics["history"], paths.output_dir / outputs.PLOTS_DIR)
    for plot in plots:  # the card travels with the adapter (to the Hub too): so do its pictures
        (paths.adapter_dir / outputs.PLOTS_DIR).mkdir(exist_ok=True)
        shutil.copy2(plot, paths.adapter_dir / outputs.PLOTS_DIR / plot.name)
    write_model_card(paths.adapter_dir, settings, model_ref, report, metrics,
                     [f"{outputs.PLOTS_DIR}/{p.name}" for p in plots], load_kwargs, provenance)
    page = write_report(paths.output_dir / outputs.REPORT, run_name=paths.run_name, settings=public_dict(settings),
                        data_report=report, metrics=metrics, plots=plots, run_dir=paths.output_dir)
    shutil.copy2(page, paths.adapter_dir / outputs.REPORT)  # self-contained: the card links it, on the Hub too
    outputs.write_json(paths.output_dir / outputs.DATA_REPORT, report)
    outputs.write_json(paths.output_dir / outputs.METRICS, metrics)
    outputs.write_json(paths.output_dir / outputs.CONFIG, {**public_dict(settings), "run_name": paths.run_name,
                                                          "sources": sources(settings), "dpo_config": args.to_dict()})
    outputs.write_manifest(paths.output_dir, paths.run_name, exclude=(paths.checkpoint_dir,), provenance=provenance)
