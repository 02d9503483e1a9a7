"""The data stage of a run: the pipeline (prepare.py) with the run's settings.

The eval pairs are a split of DPO_DATASET (by group, split.py) or, with DPO_EVAL_DATASET, that set's pairs: then
DPO_DATASET is not split, and its pairs that share an image or a prompt with the eval set are not trained on. The
report is logged in lines a person reads; all of it goes to data_report.json (the eval set's own report under
"eval_set"). Keeping the pairs for a restarted job and the other ranks is run/prepared.py's.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.data.budget import PairLengths
from entrypoint.data.formats import FORMATS
from entrypoint.data.images import size_limit
from entrypoint.data.prepare import DataSpec, PreparedData, RowRules, TokenBudget, prepare
from entrypoint.data.sources import check_image_dir, check_source
from entrypoint.models.families import Family
from entrypoint.models.image_tokens import fewer_tokens_hint

log = logging.getLogger("entrypoint")
TOP_REASONS = 4  # reasons for dropped rows named in the log line


def check_sources(settings: JobSettings) -> None:
    """The data references (DPO_DATASET, DPO_EVAL_DATASET) and DPO_IMAGE_DIR, before anything is loaded."""
    check_source(settings.dataset, settings.dataset_revision)
    if settings.eval_dataset:
        check_source(settings.eval_dataset, settings.eval_dataset_revision, setting="DPO_EVAL_DATASET")
    check_image_dir(settings.image_dir)


def prepare_pairs(settings: JobSettings, cache_dir: Path, processor: Any, family: Family, max_length: int | None,
                  max_samples: int | None, peek: bool = False) -> PreparedData:
    """The data pipeline (data/prepare.py) with this run's settings, images and token budget: train and eval pairs
    (a split, or DPO_EVAL_DATASET's)."""
    vision = family.vision
    spec = DataSpec(settings.dataset, settings.dataset_split, revision=settings.dataset_revision,
                    fmt_name=settings.dataset_format, column_spec=settings.dataset_columns, seed=settings.seed,
                    max_samples=max_samples, eval_fraction=settings.eval_fraction,
                    max_eval_pairs=settings.max_eval_pairs, num_proc=settings.dataset_num_proc, peek=peek)
    rules = RowRules(bad_rows=settings.bad_rows, max_bad_fraction=settings.max_bad_fraction,
                     max_images=family.images_per_pair, model=f"{family.name} ({settings.model})",
                     image_dir=settings.image_dir.expanduser() if settings.image_dir else None,
                     limit=size_limit(processor.image_processor, settings.image_max_pixels) if vision else None)
    budget = TokenBudget(PairLengths(processor, family), max_length, settings.max_drop_fraction,
                         fewer_tokens_hint(family, processor) if vision else None)
    if not settings.eval_dataset:
        return prepare(spec, cache_dir, rules, budget)
    if "eval_fraction" in settings.model_fields_set:
        log.warning("DPO_EVAL_FRACTION=%s is not used: DPO_EVAL_DATASET=%s is the eval set, and DPO_DATASET is "
                    "trained on whole", settings.eval_fraction, settings.eval_dataset)
    # The eval set first: its images and prompts are what the training pairs must not hold.
    rows = min(settings.max_eval_pairs, max_samples) if peek and max_samples else settings.max_eval_pairs
    evaluation = prepare(DataSpec(settings.eval_dataset, settings.eval_dataset_split,
                                  revision=settings.eval_dataset_revision, fmt_name=settings.eval_dataset_format,
                                  column_spec=settings.eval_dataset_columns, seed=settings.seed, max_samples=rows,
                                  num_proc=settings.dataset_num_proc, peek=peek, setting="DPO_EVAL_DATASET",
                                  min_pairs=1), cache_dir, rules, budget)
    training = prepare(replace(spec, eval_fraction=0, held_out_keys=evaluation.keys), cache_dir, rules, budget)
    eval_set = {key: value for key, value in evaluation.report.items() if key not in ("train_pairs", "eval_pairs")}
    report = {**training.report, "eval_pairs": len(evaluation.train), "eval_set": eval_set}
    return PreparedData(training.train, evaluation.train, report)


def eval_format(report: dict[str, Any]) -> str:
    """The format of the eval pairs: the eval set's, or the training data's for a split."""
    return (report.get("eval_set") or report)["format"]


def eval_has_answers(report: dict[str, Any]) -> bool:
    """Whether the eval pairs' chosen answer is the right one (yes/no and task accuracy are scored against it)."""
    return FORMATS[eval_format(report)].ground_truth


def log_data_report(report: dict[str, Any], sample: bool = False) -> None:
    """What the data became, in lines a person reads (the whole report is in data_report.json)."""
    used = report["rows_used"]
    what = f"a sample of {used} rows" if sample else f"{used} of {report['rows_read']} rows"
    eval_set = report.get("eval_set")
    where = f"eval: DPO_EVAL_DATASET, {report['eval_pairs']} pairs" if eval_set else f"{report['eval_pairs']} eval"
    log.info("data: %s (%s) -> %d pairs (%d train, %s)", report["source"], what, report["pairs"],
             report["train_pairs"], where)
    _log_dropped(report["dropped"], "data")
    if split := report.get("split"):
        train, held = split["train"], split["eval"]
        log.info("data: eval split by image and prompt: %d pairs in %d groups (%d images) held out, %d pairs in %d "
                 "groups (%d images) trained on; images on both sides: %d, prompts on both sides: %d",
                 held["pairs"], held["groups"], held["images"], train["pairs"], train["groups"], train["images"],
                 split["shared"]["images"], split["shared"]["prompts"])
    if eval_set:
        log.info("data: eval set %s (%s %s of %s rows) -> %d pairs", eval_set["source"], eval_set["format"],
                 eval_set["rows_used"], eval_set["rows_read"], eval_set["pairs"])
        _log_dropped(eval_set["dropped"], "data: eval set")
    tokens = report.get("tokens")
    if tokens:
        pair, image = tokens["pair_tokens"], tokens["image_tokens_per_image"]
        log.info("tokens a pair (prompt + longer answer): p50 %d, p95 %d, max %d; DPO_MAX_LENGTH=%s",
                 pair["p50"], pair["p95"], pair["max"], tokens["max_length"])
        if image["images"]:
            log.info("tokens an image: p50 %d, p95 %d, max %d (%d images)", image["p50"], image["p95"], image["max"],
                     image["images"])


def _log_dropped(dropped: dict[str, int], what: str) -> None:
    if not dropped:
        return
    top = sorted(dropped.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{reason} {count}" for reason, count in top[:TOP_REASONS])
    more = f" and {len(top) - TOP_REASONS} more reasons" if len(top) > TOP_REASONS else ""
    log.info("%s: dropped %d rows: %s%s (rows of each in data_report.json)", what, sum(dropped.values()), shown, more)
