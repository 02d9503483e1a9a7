"""One run of the job, top to bottom: check -> data -> model -> train -> evaluate -> write -> publish.

Everything a user can get wrong is checked before the model is loaded, so a bad setting costs
seconds, not GPU hours. Restartable: stages recorded in `state.json` beside the checkpoints are not
repeated, and training resumes from the newest complete checkpoint.

Ranks (one process is rank 0 of 1): every rank trains and evaluates; only rank 0 writes the run directory,
reports to wandb and publishes. Where the others need what rank 0 wrote (the prepared pairs, the checkpoint to
resume from, whether the results are complete), rank 0 decides from its own view and tells them, and they wait
until their copy of the checkpoint dir shows it (run/peers.py: on a bucket mount another node sees it late).
While they train and evaluate together, a rank that stops answering ends the others within a minute.

The two stages that need TRL (training arguments, training) import it where they run, after the
settings were checked; every other stage module imports its heavy libraries inside its functions.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entrypoint.config.settings import JobSettings, public_dict
from entrypoint.data.formats import FORMATS
from entrypoint.data.prepare import PreparedData
from entrypoint.data.stage import check_sources, eval_has_answers, log_data_report, prepare_pairs
from entrypoint.errors import ConfigError, DoesNotFit, Preempted, RecoverElsewhere
from entrypoint.evaluation.comparison import comparison_lines
from entrypoint.evaluation.evaluate import evaluate_trained, reward_metrics, with_step0
from entrypoint.machine import check_gpus, use_cpu_threads
from entrypoint.models.families import Family
from entrypoint.models.image_tokens import model_overrides
from entrypoint.models.loading import ModelRef, load_model, load_processor, model_width, resolve_model
from entrypoint.onpolicy.rounds import check_round_settings
from entrypoint.planning.cost import log_cost
from entrypoint.planning.memory import MemoryPlan, as_dict, check_memory, peak_allocated_gib
from entrypoint.planning.rounds import Judge, judge_model, log_rounds_plan
from entrypoint.planning.schedule import eval_schedule, log_eval_cost
from entrypoint.publish.destinations import check_destinations, destinations, publish_run, unpublished
from entrypoint.results.write import write_results
from entrypoint.run import checkpoints, outputs, peers
from entrypoint.run.paths import RunPaths, check_writable, run_paths
from entrypoint.run.prepared import prepared_data
from entrypoint.run.record import run_record
from entrypoint.run.rerun import Recorded, check_drift
from entrypoint.run.state import RunState
from entrypoint.training.out_of_memory import explained
from entrypoint.training.tracking import log_evaluation, log_round, setup_wandb

if TYPE_CHECKING:
    from accelerate import PartialState
    from trl import DPOConfig

log = logging.getLogger("entrypoint")
DRY_RUN_ROWS = 200  # rows a dry run measures: enough for p95 token lengths, seconds to prepare


def run(settings: JobSettings, dry_run: bool = False, recorded: Recorded | None = None) -> RunResult | None:
    """The whole job; returns where the results are and the metrics written (None for a dry run, and on every rank
    but 0). `recorded`: the run `--from-run` repeats, whose base model and data this one must match."""
    paths = run_paths(settings)
    log.info("run %s -> %s", paths.run_name, paths.output_dir)
    model_ref = check(settings, paths)
    args = training_args(settings, paths, model_ref.family)
    ranks = this_process()
    with ranks.main_process_first():  # rank 0 may wipe old state (DPO_RESUME=never) before others read it
        state = RunState.open(paths.checkpoint_dir, settings, writer=ranks.is_main_process)
    log.info("model %s (%s), dataset %s", model_ref.source, model_ref.family.name, settings.dataset)
    if dry_run:
        plan_from_a_sample(settings, paths, model_ref, args)
        log.info("dry run: settings, model, data and memory plan are fine")
        return None
    metrics = finished_metrics(settings, paths, state) if ranks.is_main_process else None
    if not peers.from_rank_0(metrics is not None):  # rank 0's view decides: another node's copy may lag
        if ranks.is_main_process:
            paths.manifest.unlink(missing_ok=True)  # whatever is there now is not a complete run
        with peers.watched(settings.peer_timeout_s):
            metrics = train_and_evaluate(settings, paths, model_ref, args, state, ranks, recorded)
        state.mark("results")
    if not ranks.is_main_process:
        return None
    return RunResult(paths, metrics, publish(settings, paths, state))


# ---- check: nothing is loaded yet

def check(settings: JobSettings, paths: RunPaths) -> ModelRef:
    """Checks that need no model weights: the folders the run writes, the model, the data, where results go, then
    the GPUs (last: asking torch about them imports it, seconds a typo in a path need not wait for)."""
    check_writable(paths)
    model_ref = resolve_model(settings.model, settings.model_family, settings.model_revision, paths.cache_dir)
    check_sources(settings)  # DPO_DATASET, DPO_EVAL_DATASET, DPO_IMAGE_DIR
    check_destinations(settings, paths)
    check_round_settings(settings, paths.cache_dir)  # DPO_ROUNDS' sampler and judge
    for warning in check_gpus(settings.allow_cpu):
        log.warning(warning)
    if threads := use_cpu_threads(model_width(model_ref)):
        log.info(threads)
    return model_ref


def training_args(settings: JobSettings, paths: RunPaths, family: Family) -> DPOConfig:
    """DPOConfig; an invalid combination of DPO_* settings (for this model family too) is a config error,
    found before loading."""
    from entrypoint.training.trainer import check_trained_modules, check_vision_args, dpo_config

    try:
        args = dpo_config(settings, paths.checkpoint_dir, paths.run_name)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training settings: {str(exc).splitlines()[0]}") from None
    check_vision_args(args, family)
    check_trained_modules(settings, family)
    return args


def this_process() -> PartialState:
    """This process's place among the ranks (one process: rank 0 of 1)."""
    from accelerate import PartialState

    return PartialState()


def plan_from_a_sample(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, args: DPOConfig) -> None:
    """--dry-run: the processor, a sample of the data measured as the run will measure it (token
    lengths, drops), and the memory plan and cost from them; no weights are loaded."""
    processor = load_processor(model_ref, settings.max_image_tiles, settings.image_max_pixels)
    rows = min(settings.max_samples or DRY_RUN_ROWS, DRY_RUN_ROWS)
    data = prepare_pairs(settings, paths.cache_dir, processor, model_ref.family, args.max_length, max_samples=rows,
                         peek=True)
    log_data_report(data.report, sample=True)
    judge = judge_model(settings, paths.cache_dir)
    plan = check_memory(settings, model_ref, processor, data.report, judge.beside(settings.quantization) if judge
                        else None)
    log_cost(settings, model_ref, processor, data.report, sampled=rows)
    if settings.rounds:
        log_rounds_plan(settings, model_ref, processor, data.report, rows, plan, judge)


def finished_metrics(settings: JobSettings, paths: RunPaths, state: RunState) -> dict[str, Any] | None:
    """metrics.json when this run's results are complete already (a restart after they were written), else None."""
    if not (state.done("results") and paths.manifest.is_file()):
        return None
    log.info("results already complete in %s", paths.output_dir)
    if settings.merge and not paths.merged_dir.is_dir():
        log.warning("DPO_MERGE=1, but this run finished without merged/; DPO_RESUME=never runs it again, merged")
    return json.loads((paths.output_dir / outputs.METRICS).read_text())


# ---- data, model and training, evaluation, results

def train_and_evaluate(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, args: DPOConfig,
                       state: RunState, ranks: PartialState, recorded: Recorded | None = None) -> dict[str, Any]:
    """Data and the memory plan (checked before the model is loaded: a problem costs no GPU time), training
    (resumed where checkpoints exist), evaluation; rank 0 then writes the results and returns the metrics ({} on
    the other ranks)."""
    processor = load_processor(model_ref, settings.max_image_tiles, settings.image_max_pixels)
    data, record = prepare_data(settings, paths, model_ref, processor, args, state, ranks, recorded)
    plan = fitting_plan(settings, model_ref, processor, data.report, state, judge_model(settings, paths.cache_dir))
    if settings.rounds:
        training = train_in_rounds(settings, paths, model_ref, processor, data, args, ranks, state, record)
    else:
        training = train(settings, paths, model_ref, processor, data, args, ranks, record)
    with explained(training.trainer, settings, model_ref, processor, data.report):
        evaluated = evaluate_trained(training.trainer, processor, data.eval, before=training.before,
                                     generations=settings.eval_generations, run_dir=paths.output_dir,
                                     ground_truth=eval_has_answers(data.report),
                                     is_main=ranks.is_main_process)
    if not ranks.is_main_process:
        return {}
    metrics = {"train": training.summary(), **({"rounds": training.rounds} if training.rounds else {}),
               "memory": {"plan": as_dict(plan), "peak_allocated_gib": peak_allocated_gib()},
               "eval_before": training.before, **evaluated,
               "history": with_step0(training.before, training.trainer.state.log_history)}
    if settings.report_to == "wandb":
        log_evaluation(metrics["comparison"], metrics["samples"], paths.output_dir)
    if settings.merge:
        del training  # the trained model's memory goes back first: the merge loads the base again
    write(settings, paths, model_ref, processor, args, data, metrics, record)
    return metrics


def prepare_data(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, processor: Any, args: DPOConfig,
                 state: RunState, ranks: PartialState, recorded: Recorded | None,
                 ) -> tuple[PreparedData, dict[str, Any]]:
    """The pairs (rank 0 prepares and keeps them for restarts), logged, and the run record; with `--from-run`,
    the recorded base model and data or exit 2 (DPO_ALLOW_DRIFT=1: a warning)."""
    data = prepared_data(settings, paths.cache_dir, state, processor, model_ref.family, args.max_length)
    log_data_report(data.report)
    record = run_record(settings, model_ref, data, paths.cache_dir, ranks.num_processes)  # manifest's provenance
    if recorded:
        check_drift(recorded, record, settings)
    return data, record


def fitting_plan(settings: JobSettings, model_ref: ModelRef, processor: Any, report: dict[str, Any],
                 state: RunState, judge: Judge | None = None) -> MemoryPlan:
    """The memory plan (with DPO_JUDGE=model's judge beside the policy), checked against this GPU. A first attempt
    that does not fit is a setting to change (exit 2); a managed job's restart that does not fit landed on a smaller
    GPU of the YAML's set than its first attempt had: exit 76, which the YAMLs recover on (onto another machine),
    instead of 2, which would end the run."""
    try:
        return check_memory(settings, model_ref, processor, report,
                            judge.beside(settings.quantization) if judge else None)
    except DoesNotFit as exc:
        if state.earlier and os.environ.get("SKYPILOT_TASK_ID"):
            raise RecoverElsewhere(f"{exc}; an earlier attempt of this managed job trained on another GPU, so "
                                   "SkyPilot is asked to recover it elsewhere") from None
        raise


@dataclass
class Training:
    """What training left: the trainer (its model, state and log history), the evaluation before it, its outcome."""

    trainer: Any  # training/trainer.py's JobDPOTrainer
    before: dict[str, float]  # DPO reward metrics at step 0, where the policy is the reference
    result: Any  # transformers' TrainOutput
    resumed_from: Path | None
    seconds: float
    rounds: list[dict[str, Any]] = field(default_factory=list)  # DPO_ROUNDS: metrics.json's "rounds"

    def summary(self) -> dict[str, Any]:
        """metrics.json's "train"."""
        return {**self.result.metrics, "global_step": self.result.global_step, "wall_seconds": self.seconds,
                "resumed_from": self.resumed_from.name if self.resumed_from else None}


def train(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, processor: Any, data: PreparedData,
          args: DPOConfig, ranks: PartialState, record: dict[str, Any]) -> Training:
    """Load the model, build the trainer, evaluate at step 0, train (from the newest complete checkpoint, if any)
    and save the adapter. Preempted (exit 75) when SIGTERM stopped training after saving a checkpoint."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from entrypoint.training.callbacks import CheckpointCallback, ProgressLogCallback, SettingsToWandb
    from entrypoint.training.trainer import build_trainer

    set_seed(settings.seed)
    resume_from = checkpoints.agreed_resume_point(paths.checkpoint_dir, ranks.is_main_process)
    saving = CheckpointCallback(paths.checkpoint_dir, settings.save_total_limit, resume_from)
    callbacks = [saving, ProgressLogCallback()]
    if settings.report_to == "wandb":
        setup_wandb(paths.run_name)
        callbacks.append(SettingsToWandb(public_dict(settings), record))
    eval_every = eval_schedule(settings, args, data.report["train_pairs"], data.report["eval_pairs"],
                               ranks.num_processes)
    model = load_model(model_ref, settings.quantization, settings.distributed, processor)
    trainer = build_trainer(settings, model, model_ref.family, processor, data.train, data.eval, args, callbacks)
    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; ProgressLogCallback logs instead
    with explained(trainer, settings, model_ref, processor, data.report):  # exit 3, with what to change
        # Evaluated on every attempt, resumed ones too: an evaluation before training changes the numerics of the
        # steps after it, so an exact resume must repeat it. At step 0 the policy is the reference, so the result
        # is the same every time.
        before = reward_metrics(trainer)
        log_eval_cost(before, args, data.report, eval_every, ranks.num_processes)
        if resume_from:
            log.info("resuming from %s", resume_from)
        start_collecting_garbage()
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.perf_counter() - started
    if saving.preempted:
        raise Preempted(f"stopped at step {result.global_step} by SIGTERM; checkpoint saved in {paths.checkpoint_dir}")
    trainer.save_adapter(paths.adapter_dir)  # every rank: sharded strategies gather the weights; rank 0 checks
    return Training(trainer, before, result, resume_from, seconds)


def train_in_rounds(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, processor: Any, data: PreparedData,
                    args: DPOConfig, ranks: PartialState, state: RunState, record: dict[str, Any]) -> Training:
    """DPO_ROUNDS: the on-policy rounds (onpolicy/rounds.py), each round's checkpoints under its own folder; the last
    round's adapter is the run's. With wandb, one run for every round (the Trainer's callback opens it in round 1)
    and a point a round (`round/*`). Preempted (exit 75) when SIGTERM stopped a round's training after saving."""
    from entrypoint.onpolicy.rounds import run_rounds
    from entrypoint.training.callbacks import CheckpointCallback, ProgressLogCallback, SettingsToWandb

    if settings.judge == "ground-truth" and not FORMATS[data.report["format"]].ground_truth:  # before any model
        holding = ", ".join(name for name, fmt in FORMATS.items() if fmt.ground_truth)
        raise ConfigError(f"DPO_ROUNDS={settings.rounds} with DPO_JUDGE=ground-truth needs a dataset format that holds "
                          f"each prompt's right answer ({holding}); DPO_DATASET is {data.report['format']}")

    tracked = settings.report_to == "wandb"
    if tracked:
        setup_wandb(paths.run_name)

    def callbacks_for(root: Path, resumed_from: Path | None) -> list[Any]:
        callbacks = [CheckpointCallback(root, settings.save_total_limit, resumed_from), ProgressLogCallback()]
        return [*callbacks, SettingsToWandb(public_dict(settings), record)] if tracked else callbacks

    outcome = run_rounds(settings, paths.checkpoint_dir, model_ref, model_ref.family, processor, data, args, state,
                         ranks.is_main_process, ranks.process_index, ranks.num_processes, callbacks_for,
                         on_round=log_round if tracked and ranks.is_main_process else None)
    outcome.trainer.save_adapter(paths.adapter_dir)
    return Training(outcome.trainer, {}, outcome.result, outcome.resumed_from, outcome.seconds, outcome.rounds)


def start_collecting_garbage() -> None:
    """Start-up ran with Python's garbage collector paused (__main__): what it left behind goes now, what lives on
    (modules, the model, the data) is frozen out of later collections, and collecting resumes for training."""
    gc.collect()
    gc.freeze()
    gc.enable()


def write(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, processor: Any, args: DPOConfig,
          data: PreparedData, metrics: dict[str, Any], record: dict[str, Any]) -> None:
    """Rank 0: the merged model when asked for (DPO_MERGE=1), then the results, manifest.json last."""
    shutil.rmtree(paths.merged_dir, ignore_errors=True)  # an earlier attempt's, not this adapter's
    if settings.merge:
        from entrypoint.training.merge import free_memory, write_merged

        free_memory()
        write_merged(paths.adapter_dir, model_ref, settings, processor, paths.merged_dir)
    load_kwargs = model_overrides(model_ref.family, processor) if settings.max_image_tiles else {}
    write_results(settings, paths, model_ref, args.to_dict(), data.report, metrics, load_kwargs, record, data.train)


# ---- publish, and what the log ends with

def publish(settings: JobSettings, paths: RunPaths, state: RunState) -> dict[str, Any]:
    """Rank 0: the finished run to each destination it has not reached yet; returns every one it has reached."""
    published = state.get("published") or {}
    todo = unpublished(destinations(settings), published)
    if todo:
        published = {**published, **publish_run(settings, paths, todo)}
        state.mark("published", published)
    return published


@dataclass(frozen=True)
class RunResult:
    paths: RunPaths
    metrics: dict[str, Any]
    published: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """What a person wants at the end of the log: where the results are, base vs tuned, where they went."""
        train, after = self.metrics["train"], self.metrics["eval_after"]
        lines = [f"done: {self.paths.run_name}",
                 f"  report:   {self.paths.output_dir / outputs.REPORT}",
                 f"  adapter:  {self.paths.adapter_dir}",
                 f"  manifest: {self.paths.manifest}",
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
