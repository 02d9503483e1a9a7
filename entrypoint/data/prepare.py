"""Raw rows -> checked, formatted, measured train/eval pairs, and a report of where every row went.

Every row a user gives ends in exactly one place: trained on, held out for evaluation, not sampled
(DPO_MAX_SAMPLES), or dropped with its reason (data_report.json counts each reason and names a few
rows of each). A bad row is skipped and counted (DPO_BAD_ROWS=skip), or stops the job at the first
one with exit 2 (DPO_BAD_ROWS=fail); more bad rows than DPO_MAX_BAD_FRACTION stop it too, before
any model is loaded. Pairs whose prompt does not fit DPO_MAX_LENGTH are counted the same way, with
their own limit, DPO_MAX_DROP_FRACTION: their fix is a setting, not the data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint.data.budget import TOO_LONG, budget_warnings, refuse_too_many_drops, token_report
from entrypoint.data.formats import BadRow, format_context, image_column, resolve_format
from entrypoint.data.images import ImageProblem, SizeLimit, load_image
from entrypoint.data.sources import image_root, load_rows, local_path
from entrypoint.errors import ConfigError

log = logging.getLogger("entrypoint.data")

MIN_PAIRS = 2  # DPO needs at least one train pair and one batch; fewer is a data problem
ROWS_PER_PROCESS = 1000  # with fewer rows per worker, starting the worker costs more than it saves
EXAMPLES_PER_REASON = 5  # row labels kept in the report for each reason a row was dropped
ID_COLUMNS = ("id", "idx")  # a dataset's own row ids, shown beside the row number


@dataclass(frozen=True)
class RowRules:
    """What a usable row is, and what happens to the others."""

    bad_rows: str = "skip"  # DPO_BAD_ROWS: "skip" counts and drops bad rows; "fail" stops at the first
    max_bad_fraction: float = 1.0  # DPO_MAX_BAD_FRACTION
    max_images: int | None = None  # images a pair may hold (None: any number; 0: a text-only model)
    model: str = "the model"  # named when a row has more images than it takes
    image_dir: Path | None = None  # where relative image paths are (DPO_IMAGE_DIR, or beside the data)


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset of pairs
    eval: Any | None
    report: dict[str, Any] = field(default_factory=dict)


def _features(vision: bool) -> Any:
    """The prepared columns' types, declared so that no batch of bad rows can make them null."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    text = Value("string")
    content = List({"type": text, "text": text}) if vision else text
    messages = List({"role": text, "content": content})
    return Features({"prompt": messages, "chosen": messages, "rejected": messages,
                     **({"images": List(ImageFeature())} if vision else {}),
                     "lengths": text, "problem": text, "row": text})


def _undecoded(rows: Any) -> Any:
    """Image columns as their stored bytes: images.py decodes them, safely, not datasets."""
    from datasets import Image as ImageFeature
    from datasets import List, Sequence

    for name, feature in rows.features.items():
        if isinstance(feature, ImageFeature) and feature.decode:
            rows = rows.cast_column(name, ImageFeature(decode=False))
        elif isinstance(feature, (List, Sequence)) and isinstance(feature.feature, ImageFeature):
            rows = rows.cast_column(name, List(ImageFeature(decode=False)))
    return rows


def processes_for(rows: int, asked: int | None) -> int | None:
    """DPO_DATASET_NUM_PROC when set; otherwise one worker per ROWS_PER_PROCESS rows, up to the CPUs this
    process may use (None: no workers). Decoding and shrinking images is most of the time, and it is spread
    evenly: on 2 cores 2,000 photos take about half as long (bench/RESULTS.md)."""
    if asked:
        return asked
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cpus, rows // ROWS_PER_PROCESS)
    return workers if workers > 1 else None


@contextmanager
def counted_rows(what: str, total: int) -> Iterator[None]:
    """Progress of a datasets `map` run inside the block: rows done, elapsed time and ETA.

    On a terminal datasets draws its own bar. Off one that bar is off (logs.py), but `map` still sends it the
    rows done, its workers' too, a few times a second (datasets' `hf_tqdm`, looked up when `map` runs): for the
    block, a bar class that passes those counts on to `logs.progress` lines. Nothing is added per row."""
    from datasets import arrow_dataset

    from entrypoint.logs import progress, progress_is_a_bar

    bar_class = getattr(arrow_dataset, "hf_tqdm", None)
    if progress_is_a_bar() or not isinstance(bar_class, type):
        yield
        return
    with progress(what, total, "rows") as advance:

        class CountingBar(bar_class):
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, **kwargs)
                if kwargs.get("initial"):  # shards a previous run left in datasets' cache
                    advance(kwargs["initial"])

            def update(self, n: float | None = 1) -> Any:
                advance(int(n or 0))
                return super().update(n)

        arrow_dataset.hf_tqdm = CountingBar
        try:
            yield
        finally:
            arrow_dataset.hf_tqdm = bar_class


def row_label(index: int, row: dict[str, Any]) -> str:
    """`row 17` (its position in the split as read), with the dataset's own id when it has one."""
    ids = [f"{c} {row[c]}" for c in ID_COLUMNS if isinstance(row.get(c), (str, int)) and str(row[c]).strip()]
    return f"row {index}" + (f" ({ids[0]})" if ids else "")


def _top(counts: Counter, examples: dict[str, list[str]], n: int = 3) -> str:
    return "; ".join(f"{reason}: {count} (e.g. {', '.join(examples[reason][:2])})"
                     for reason, count in counts.most_common(n))


def check_bad_rows(dropped: Counter, examples: dict[str, list[str]], rows_used: int, ref: str,
                   max_bad_fraction: float) -> int:
    """Bad rows (every drop but the token budget's) against DPO_MAX_BAD_FRACTION; returns their count."""
    bad = Counter({reason: n for reason, n in dropped.items() if reason != TOO_LONG})
    total = sum(bad.values())
    if rows_used and total == rows_used:
        raise ConfigError(f"DPO_DATASET={ref}: every one of the {rows_used} rows is bad: {_top(bad, examples)}")
    if total > max_bad_fraction * rows_used:
        raise ConfigError(f"DPO_DATASET={ref}: {total} of {rows_used} rows ({100 * total / rows_used:.1f}%) are bad, "
                          f"more than DPO_MAX_BAD_FRACTION={max_bad_fraction}: {_top(bad, examples)}. Fix the data, "
                          "or raise DPO_MAX_BAD_FRACTION to train on the rest")
    return total


def prepare(ref: str, split: str, *, fmt_name: str, column_spec: str, seed: int, max_samples: int | None,
            eval_fraction: float, max_eval_pairs: int, limit: SizeLimit | None, cache_dir: Path,
            pair_lengths: Callable[..., dict[str, Any]] | None = None,
            max_length: int | None = None, num_proc: int | None = None, max_drop_fraction: float = 1.0,
            fewer_image_tokens: str | None = None, peek: bool = False, rules: RowRules = RowRules(),
            revision: str | None = None) -> PreparedData:
    """Load, shuffle, cap, format, check, measure and split. Deterministic for a given seed.

    `pair_lengths` measures a pair in tokens (budget.PairLengths); pairs whose prompt reaches
    `max_length` are dropped, and more than `max_drop_fraction` of them is a ConfigError naming the
    fix (`fewer_image_tokens`: the setting that spends fewer tokens an image). `num_proc`
    (DPO_DATASET_NUM_PROC) formats in parallel processes (default: see `processes_for`). `peek` reads
    only the first `max_samples` rows of a Hub dataset (for --dry-run). `rules`: see RowRules. `revision`: a Hub
    dataset's (DPO_DATASET_REVISION).
    """
    import numpy as np

    local = local_path(ref, cache_dir)
    rows = load_rows(ref, split, cache_dir, limit=max_samples if peek else None, local=local, revision=revision)
    image_dir = rules.image_dir or image_root(local)
    rows_read = len(rows)
    if rows_read == 0:
        raise ConfigError(f"DPO_DATASET={ref}: split {split!r} has no rows")
    fmt, columns = resolve_format(fmt_name, rows.column_names, column_spec)
    images_in = image_column(fmt, columns, rows.column_names)
    if images_in and rules.max_images == 0:
        raise ConfigError(f"DPO_DATASET={ref} has images (column {images_in!r}) but {rules.model} is text-only: "
                          "use a vision model, or data without images")
    log.info("data: format %s (%s; columns %s)", fmt.name, "given" if fmt_name != "auto" else "detected",
             ", ".join(rows.column_names))
    order = np.random.default_rng(seed).permutation(rows_read)[:max_samples]  # = datasets' shuffle(seed=seed)
    rows = _undecoded(rows).select(order)
    context = format_context(fmt, rows, columns, seed)
    vision = images_in is not None
    empty = dict.fromkeys(("prompt", "chosen", "rejected", "images") if vision else ("prompt", "chosen", "rejected"))
    unmeasured = {"prompt_tokens": 0, "chosen_tokens": 0, "rejected_tokens": 0, "image_tokens": []}

    def to_pair(row: dict[str, Any], index: int) -> dict[str, Any]:
        label = row_label(int(order[index]), row)
        lengths = unmeasured
        try:
            pair = fmt.to_pair(row, context)
            if vision:
                images = pair.get("images", [])
                if not images:
                    raise BadRow("missing image")
                if rules.max_images is not None and len(images) > rules.max_images:
                    raise BadRow(f"{len(images)} images in one row ({rules.model} takes {rules.max_images})")
                clean = [load_image(value, limit or SizeLimit(), image_dir) for value in images]
                pair["images"] = [image.stored for image in clean]
                sizes = [image.size for image in clean]
            else:
                sizes = []
            lengths = pair_lengths(pair, sizes) if pair_lengths else unmeasured
            problem = TOO_LONG if max_length and lengths["prompt_tokens"] >= max_length else ""
        except (BadRow, ImageProblem) as bad:
            problem = str(bad)
        if problem and rules.bad_rows == "fail":
            raise ConfigError(f"DPO_BAD_ROWS=fail: {label} of DPO_DATASET={ref}: {problem}. Fix or remove the row, "
                              "or set DPO_BAD_ROWS=skip to skip bad rows (up to DPO_MAX_BAD_FRACTION)")
        if problem:
            return {**empty, "lengths": json.dumps(lengths), "problem": problem, "row": label}
        return {**pair, "lengths": json.dumps(lengths), "problem": "", "row": label}

    workers = processes_for(len(rows), num_proc)
    if workers:  # the tokenizer was used here already: its threads and forked workers do not mix
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with counted_rows("data: formatting pairs", len(rows)):
        pairs = rows.map(to_pair, with_indices=True, remove_columns=rows.column_names, features=_features(vision),
                         desc="Formatting pairs", num_proc=workers)
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for problem, label in zip(pairs["problem"], pairs["row"], strict=True):
        if problem:
            dropped[problem] += 1
            if len(examples.setdefault(problem, [])) < EXAMPLES_PER_REASON:
                examples[problem].append(label)
    bad = check_bad_rows(dropped, examples, len(rows), ref, rules.max_bad_fraction)
    tokens = None
    if pair_lengths:
        measured = [json.loads(lengths) for lengths, problem in zip(pairs["lengths"], pairs["problem"], strict=True)
                    if problem in ("", TOO_LONG)]
        tokens = token_report(measured, max_length)
        for line in budget_warnings(tokens, fewer_image_tokens):
            log.warning(line)
        refuse_too_many_drops(tokens, max_drop_fraction, fewer_image_tokens)
    pairs = pairs.filter(lambda problem: not problem, input_columns="problem")
    pairs = pairs.remove_columns(["problem", "lengths", "row"])
    if len(pairs) < MIN_PAIRS:
        hint = f" {budget_warnings(tokens, fewer_image_tokens)[0]}" if tokens and dropped.get(TOO_LONG) else ""
        raise ConfigError(f"DPO_DATASET={ref}: only {len(pairs)} usable pairs "
                          f"(dropped: {dict(dropped) or 'none'}).{hint}")
    train, evaluation = pairs, None
    if eval_fraction > 0:
        n_eval = min(max_eval_pairs, max(1, round(len(pairs) * eval_fraction)))
        split_pairs = pairs.train_test_split(test_size=n_eval, seed=seed)
        train, evaluation = split_pairs["train"], split_pairs["test"]
    report = {
        "source": ref, "format": fmt.name, "format_detected": fmt_name == "auto", "columns": rows.column_names,
        "rows_read": rows_read, "rows_used": len(rows), "not_sampled": rows_read - len(rows),
        "pairs": len(pairs), "bad_rows": bad, "dropped": dict(dropped.most_common()),
        "dropped_examples": {reason: examples[reason] for reason, _ in dropped.most_common()},
        "train_pairs": len(train), "eval_pairs": len(evaluation) if evaluation is not None else 0,
        **({"tokens": tokens} if tokens else {}),
    }
    return PreparedData(train, evaluation, report)


def save_prepared(data: PreparedData, directory: Path) -> None:
    """Write the pairs next to the checkpoints (atomically), so a restarted job skips preparation."""
    import datasets

    splits = {"train": data.train, **({"eval": data.eval} if data.eval is not None else {})}
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    datasets.DatasetDict(splits).save_to_disk(str(tmp))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def load_prepared(directory: Path, report: dict[str, Any]) -> PreparedData:
    import datasets

    splits = datasets.load_from_disk(str(directory))
    return PreparedData(splits["train"], splits["eval"] if "eval" in splits else None, report)
