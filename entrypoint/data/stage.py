"""The data stage of a run: the pipeline (prepare.py) with the run's settings, reused across restarts.

Rank 0 prepares the pairs once and saves them beside the checkpoints; a restarted job, and the other
ranks, load what it saved. The report is logged in lines a person reads; all of it goes to
data_report.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from entrypoint.settings import JobSettings

log = logging.getLogger("entrypoint")
TOP_REASONS = 4  # reasons for dropped rows named in the log line


def prepare_pairs(settings: JobSettings, cache_dir: Path, processor: Any, family: Any, max_length: int | None,
                  max_samples: int | None, peek: bool = False) -> Any:
    """The data pipeline (data/prepare.py) with this run's settings, images and token budget."""
    from entrypoint.data.budget import PairLengths
    from entrypoint.data.images import size_limit
    from entrypoint.data.prepare import RowRules, prepare
    from entrypoint.models.image_tokens import fewer_tokens_hint

    vision = family.vision
    return prepare(settings.dataset, settings.dataset_split, fmt_name=settings.dataset_format,
                   column_spec=settings.dataset_columns, seed=settings.seed, max_samples=max_samples,
                   eval_fraction=settings.eval_fraction, max_eval_pairs=settings.max_eval_pairs,
                   limit=size_limit(processor.image_processor, settings.image_max_pixels) if vision else None,
                   cache_dir=cache_dir, pair_lengths=PairLengths(processor, family), max_length=max_length,
                   num_proc=settings.dataset_num_proc, max_drop_fraction=settings.max_drop_fraction,
                   fewer_image_tokens=fewer_tokens_hint(family, processor) if vision else None, peek=peek,
                   revision=settings.dataset_revision,
                   rules=RowRules(bad_rows=settings.bad_rows, max_bad_fraction=settings.max_bad_fraction,
                                  max_images=family.images_per_pair, model=f"{family.name} ({settings.model})",
                                  image_dir=settings.image_dir.expanduser() if settings.image_dir else None))


def log_data_report(report: dict[str, Any], sample: bool = False) -> None:
    """What the data became, in lines a person reads (the whole report is in data_report.json)."""
    used = report["rows_used"]
    what = f"a sample of {used} rows" if sample else f"{used} of {report['rows_read']} rows"
    log.info("data: %s (%s) -> %d pairs (%d train, %d eval)", report["source"], what, report["pairs"],
             report["train_pairs"], report["eval_pairs"])
    if report["dropped"]:
        top = sorted(report["dropped"].items(), key=lambda item: -item[1])
        shown = ", ".join(f"{reason} {count}" for reason, count in top[:TOP_REASONS])
        more = f" and {len(top) - TOP_REASONS} more reasons" if len(top) > TOP_REASONS else ""
        log.info("data: dropped %d rows: %s%s (rows of each in data_report.json)",
                 sum(report["dropped"].values()), shown, more)
    tokens = report.get("tokens")
    if tokens:
        pair, image = tokens["pair_tokens"], tokens["image_tokens_per_image"]
        log.info("tokens a pair (prompt + longer answer): p50 %d, p95 %d, max %d; DPO_MAX_LENGTH=%s",
                 pair["p50"], pair["p95"], pair["max"], tokens["max_length"])
        if image["images"]:
            log.info("tokens an image: p50 %d, p95 %d, max %d (%d images)", image["p50"], image["p95"], image["max"],
                     image["images"])


def prepared_data(settings: JobSettings, cache_dir: Path, state: Any, processor: Any, family: Any,
                  max_length: int | None) -> Any:
    """Pairs ready for the trainer: reused from the checkpoint dir when a previous attempt made them."""
    from entrypoint.data.prepare import load_prepared, save_prepared

    state.reload()
    if state.done("prepared") and state.prepared_dir.is_dir():
        try:
            data = load_prepared(state.prepared_dir, state.get("prepared"))
            log.info("reusing prepared data from %s", state.prepared_dir)
            return data
        except (OSError, ValueError) as exc:  # on a bucket mount: cut off by a preemption, or not there yet
            log.warning("prepared data in %s is incomplete (%s): preparing again", state.prepared_dir, exc)
    data = prepare_pairs(settings, cache_dir, processor, family, max_length, settings.max_samples)
    if state.writer:
        save_prepared(data, state.prepared_dir)
    state.mark("prepared", data.report)
    return data
