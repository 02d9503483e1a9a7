"""The data stage of a run: the pipeline (prepare.py) with the run's settings.

The report is logged in lines a person reads; all of it goes to data_report.json. Keeping the pairs for a
restarted job and the other ranks is run/prepared.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.data.budget import PairLengths
from entrypoint.data.images import size_limit
from entrypoint.data.prepare import DataSpec, PreparedData, RowRules, TokenBudget, prepare
from entrypoint.models.families import Family
from entrypoint.models.image_tokens import fewer_tokens_hint

log = logging.getLogger("entrypoint")
TOP_REASONS = 4  # reasons for dropped rows named in the log line


def prepare_pairs(settings: JobSettings, cache_dir: Path, processor: Any, family: Family, max_length: int | None,
                  max_samples: int | None, peek: bool = False) -> PreparedData:
    """The data pipeline (data/prepare.py) with this run's settings, images and token budget."""
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
    return prepare(spec, cache_dir, rules, budget)


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
