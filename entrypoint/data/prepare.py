"""Raw rows -> checked, formatted, measured train/eval pairs, and a report of where every row went.

Every row a user gives ends in exactly one place: trained on, held out for evaluation, not sampled
(DPO_MAX_SAMPLES), or dropped with its reason (data_report.json counts each reason and names a few
rows of each). The eval split keeps pairs that share an image or a prompt on one side (split.py); with an
eval set (DPO_EVAL_DATASET) there is no split, and training pairs that share an image or a prompt with it are
left out, counted like a drop. A bad row is skipped and counted (DPO_BAD_ROWS=skip), or stops the job at the first
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
from entrypoint.data.formats import BadRow, Format, FormatContext, format_context, image_column, resolve_format
from entrypoint.data.images import ImageProblem, SizeLimit, load_image
from entrypoint.data.sources import image_root, load_rows, local_path
from entrypoint.data.split import grouped_split, pair_keys
from entrypoint.errors import ConfigError

log = logging.getLogger("entrypoint.data")

MIN_PAIRS = 2  # DPO needs at least one train pair and one batch; fewer is a data problem
ROWS_PER_PROCESS = 1000  # with fewer rows per worker, starting the worker costs more than it saves
EXAMPLES_PER_REASON = 5  # row labels kept in the report for each reason a row was dropped
ID_COLUMNS = ("id", "idx")  # a dataset's own row ids, shown beside the row number
UNMEASURED = {"prompt_tokens": 0, "chosen_tokens": 0, "rejected_tokens": 0, "image_tokens": []}
IN_EVAL_SET = "image or prompt also in DPO_EVAL_DATASET"  # left out of training: not a bad row, a leak avoided
NOT_BAD = (TOO_LONG, IN_EVAL_SET)  # drops that do not count against DPO_MAX_BAD_FRACTION


@dataclass(frozen=True)
class DataSpec:
    """What to read, and how much of it: the rows of one split, shuffled with the seed, capped, split for eval."""

    ref: str  # DPO_DATASET
    split: str = "train"  # DPO_DATASET_SPLIT
    revision: str | None = None  # DPO_DATASET_REVISION (a Hub dataset's)
    fmt_name: str = "auto"  # DPO_DATASET_FORMAT
    column_spec: str = ""  # DPO_DATASET_COLUMNS
    seed: int = 0  # DPO_SEED: the shuffle and the split
    max_samples: int | None = None  # DPO_MAX_SAMPLES
    eval_fraction: float = 0.0  # DPO_EVAL_FRACTION
    max_eval_pairs: int = 256  # DPO_MAX_EVAL_PAIRS
    num_proc: int | None = None  # DPO_DATASET_NUM_PROC (default: see `processes_for`)
    peek: bool = False  # read only the first `max_samples` rows of a Hub dataset (for --dry-run)
    setting: str = "DPO_DATASET"  # the setting that names this data, in messages (or DPO_EVAL_DATASET)
    min_pairs: int = MIN_PAIRS  # fewer usable pairs is a ConfigError (an eval set needs one)
    held_out_keys: frozenset[str] = frozenset()  # an eval set's images and prompts (split.py's keys): not trained on


@dataclass(frozen=True)
class RowRules:
    """What a usable row is, and what happens to the others."""

    bad_rows: str = "skip"  # DPO_BAD_ROWS: "skip" counts and drops bad rows; "fail" stops at the first
    max_bad_fraction: float = 1.0  # DPO_MAX_BAD_FRACTION
    max_images: int | None = None  # images a pair may hold (None: any number; 0: a text-only model)
    model: str = "the model"  # named when a row has more images than it takes
    image_dir: Path | None = None  # where relative image paths are (DPO_IMAGE_DIR, or beside the data)
    limit: SizeLimit | None = None  # the size images are shrunk to (images.size_limit); None: SizeLimit()


@dataclass(frozen=True)
class TokenBudget:
    """What a pair may cost in tokens: pairs whose prompt reaches `max_length` are dropped, and more than
    `max_drop_fraction` of them is a ConfigError naming the fix (`fewer_image_tokens`: the setting that spends
    fewer tokens an image). Without `pair_lengths` nothing is measured."""

    pair_lengths: Callable[..., dict[str, Any]] | None = None  # budget.PairLengths
    max_length: int | None = None  # DPO_MAX_LENGTH
    max_drop_fraction: float = 1.0  # DPO_MAX_DROP_FRACTION
    fewer_image_tokens: str | None = None


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset of pairs
    eval: Any | None
    report: dict[str, Any] = field(default_factory=dict)
    keys: frozenset[str] = frozenset()  # every pair's images and prompt (split.py), while preparing; not saved


def _features(vision: bool, extra: tuple[str, ...] = ()) -> Any:
    """The prepared columns' types, declared so that no batch of bad rows can make them null. `extra`: the
    format's own text columns (Format.extra)."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    text = Value("string")
    content = List({"type": text, "text": text}) if vision else text
    messages = List({"role": text, "content": content})
    return Features({"prompt": messages, "chosen": messages, "rejected": messages,
                     **({"images": List(ImageFeature())} if vision else {}), **dict.fromkeys(extra, text),
                     "lengths": text, "problem": text, "row": text, "keys": text})


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
                   max_bad_fraction: float, setting: str = "DPO_DATASET") -> int:
    """Bad rows (every drop but the token budget's and the eval set's) against DPO_MAX_BAD_FRACTION; returns their
    count."""
    bad = Counter({reason: n for reason, n in dropped.items() if reason not in NOT_BAD})
    total = sum(bad.values())
    if rows_used and total == rows_used:
        raise ConfigError(f"{setting}={ref}: every one of the {rows_used} rows is bad: {_top(bad, examples)}")
    if total > max_bad_fraction * rows_used:
        raise ConfigError(f"{setting}={ref}: {total} of {rows_used} rows ({100 * total / rows_used:.1f}%) are bad, "
                          f"more than DPO_MAX_BAD_FRACTION={max_bad_fraction}: {_top(bad, examples)}. Fix the data, "
                          "or raise DPO_MAX_BAD_FRACTION to train on the rest")
    return total


def prepare(spec: DataSpec, cache_dir: Path, rules: RowRules = RowRules(),
            budget: TokenBudget = TokenBudget()) -> PreparedData:
    """Load, shuffle, cap, format, check, measure and split: `spec`'s rows as pairs, every row accounted for in the
    report. Deterministic for a given seed. `rules`: what a usable row is; `budget`: what a pair may cost."""
    rows, image_dir = read_rows(spec, cache_dir, rules)
    rows_read, columns_read = len(rows), rows.column_names
    fmt, columns, vision = detect_format(spec, rows, rules)
    order, rows = sampled(rows, spec)
    formatter = RowFormatter(fmt, format_context(fmt, rows, columns, spec.seed), order, vision, spec.ref, rules,
                             budget, image_dir, spec.setting)
    pairs = leave_out(format_pairs(rows, formatter, spec.num_proc), spec.held_out_keys)
    dropped, examples = drop_reasons(pairs)
    bad = check_bad_rows(dropped, examples, len(rows), spec.ref, rules.max_bad_fraction, spec.setting)
    tokens = check_token_budget(pairs, budget)
    pairs = usable_pairs(pairs, spec, dropped, tokens, budget)
    keys = [json.loads(own) for own in pairs["keys"]]
    pairs = pairs.remove_columns("keys")
    train, evaluation, split = split_eval(pairs, keys, spec)
    report = {
        "source": spec.ref, "format": fmt.name, "format_detected": spec.fmt_name == "auto", "columns": columns_read,
        "rows_read": rows_read, "rows_used": len(rows), "not_sampled": rows_read - len(rows),
        "pairs": len(pairs), "bad_rows": bad, "dropped": dict(dropped.most_common()),
        "dropped_examples": {reason: examples[reason] for reason, _ in dropped.most_common()},
        "train_pairs": len(train), "eval_pairs": len(evaluation) if evaluation is not None else 0,
        **({"split": split} if split else {}), **({"tokens": tokens} if tokens else {}),
    }
    return PreparedData(train, evaluation, report, frozenset(key for own in keys for key in own))


# ---- the steps, in order

def read_rows(spec: DataSpec, cache_dir: Path, rules: RowRules) -> tuple[Any, Path | None]:
    """The split's raw rows (`peek`: only the first `max_samples` of a Hub dataset), and the folder relative image
    paths point into. ConfigError: no rows."""
    local = local_path(spec.ref, cache_dir)
    rows = load_rows(spec.ref, spec.split, cache_dir, limit=spec.max_samples if spec.peek else None, local=local,
                     revision=spec.revision, setting=spec.setting)
    if len(rows) == 0:
        raise ConfigError(f"{spec.setting}={spec.ref}: split {spec.split!r} has no rows")
    return rows, rules.image_dir or image_root(local)


def detect_format(spec: DataSpec, rows: Any, rules: RowRules) -> tuple[Format, dict[str, str], bool]:
    """The format (given or detected from the columns), its column mapping, and whether the pairs have images.
    ConfigError: images for a text-only model."""
    fmt, columns = resolve_format(spec.fmt_name, rows.column_names, spec.column_spec, spec.setting)
    images_in = image_column(fmt, columns, rows.column_names)
    if images_in and rules.max_images == 0:
        raise ConfigError(f"{spec.setting}={spec.ref} has images (column {images_in!r}) but {rules.model} is "
                          "text-only: use a vision model, or data without images")
    log.info("data: format %s (%s; columns %s)", fmt.name, "given" if spec.fmt_name != "auto" else "detected",
             ", ".join(rows.column_names))
    return fmt, columns, images_in is not None


def sampled(rows: Any, spec: DataSpec) -> tuple[Any, Any]:
    """The rows shuffled with the seed and capped at DPO_MAX_SAMPLES (their order, and the rows with their images
    undecoded)."""
    import numpy as np

    order = np.random.default_rng(spec.seed).permutation(len(rows))[:spec.max_samples]  # = shuffle(seed=seed)
    return order, _undecoded(rows).select(order)


@dataclass(frozen=True)
class RowFormatter:
    """One raw row -> a pair with its token lengths, or the reason it cannot be used (`datasets.map` calls it, in
    worker processes too). DPO_BAD_ROWS=fail stops at the first bad row, naming it."""

    fmt: Format
    context: FormatContext
    order: Any  # the sampled rows' positions in the split as read, for row labels
    vision: bool
    ref: str
    rules: RowRules
    budget: TokenBudget
    image_dir: Path | None
    setting: str = "DPO_DATASET"

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        label = row_label(int(self.order[index]), row)
        lengths, keys = UNMEASURED, []
        try:
            pair = self.fmt.to_pair(row, self.context)
            sizes = self._clean_images(pair) if self.vision else []
            keys = pair_keys(pair["prompt"], [image["bytes"] for image in pair.get("images", [])])
            lengths = self.budget.pair_lengths(pair, sizes) if self.budget.pair_lengths else UNMEASURED
            max_length = self.budget.max_length
            problem = TOO_LONG if max_length and lengths["prompt_tokens"] >= max_length else ""
        except (BadRow, ImageProblem) as bad:
            problem = str(bad)
        if problem and self.rules.bad_rows == "fail":
            raise ConfigError(f"DPO_BAD_ROWS=fail: {label} of {self.setting}={self.ref}: {problem}. Fix or remove "
                              "the row, or set DPO_BAD_ROWS=skip to skip bad rows (up to DPO_MAX_BAD_FRACTION)")
        bookkeeping = {"lengths": json.dumps(lengths), "problem": problem, "row": label, "keys": json.dumps(keys)}
        if problem:
            return {**self._empty(), **bookkeeping}
        return {**dict.fromkeys(self.fmt.extra, ""), **pair, **bookkeeping}

    def _clean_images(self, pair: dict[str, Any]) -> list[tuple[int, int]]:
        """The pair's images decoded safely and shrunk to the limit (pair["images"] then holds their stored bytes);
        returns their sizes. BadRow: none, or more than the model takes."""
        images = pair.get("images", [])
        if not images:
            raise BadRow("missing image")
        if self.rules.max_images is not None and len(images) > self.rules.max_images:
            raise BadRow(f"{len(images)} images in one row ({self.rules.model} takes {self.rules.max_images})")
        clean = [load_image(value, self.rules.limit or SizeLimit(), self.image_dir) for value in images]
        pair["images"] = [image.stored for image in clean]
        return [image.size for image in clean]

    def _empty(self) -> dict[str, Any]:
        return {**dict.fromkeys(("prompt", "chosen", "rejected", "images") if self.vision else
                                ("prompt", "chosen", "rejected")), **dict.fromkeys(self.fmt.extra, "")}


def format_pairs(rows: Any, formatter: RowFormatter, num_proc: int | None) -> Any:
    """Every row through `formatter`, in parallel processes for many rows; progress in the log."""
    workers = processes_for(len(rows), num_proc)
    if workers:  # the tokenizer was used here already: its threads and forked workers do not mix
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with counted_rows("data: formatting pairs", len(rows)):
        return rows.map(formatter, with_indices=True, remove_columns=rows.column_names,
                        features=_features(formatter.vision, formatter.fmt.extra), desc="Formatting pairs",
                        num_proc=workers)


def leave_out(pairs: Any, held_out_keys: frozenset[str]) -> Any:
    """Pairs sharing an image or a prompt with the eval set marked IN_EVAL_SET (counted, then not trained on)."""
    if not held_out_keys:
        return pairs

    def mark(problem: str, keys: str) -> dict[str, str]:
        leaked = not problem and not held_out_keys.isdisjoint(json.loads(keys))
        return {"problem": IN_EVAL_SET if leaked else problem}

    return pairs.map(mark, input_columns=["problem", "keys"], desc="Leaving out eval-set images and prompts")


def drop_reasons(pairs: Any) -> tuple[Counter, dict[str, list[str]]]:
    """How many rows were dropped for each reason, and the labels of the first few of each."""
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for problem, label in zip(pairs["problem"], pairs["row"], strict=True):
        if problem:
            dropped[problem] += 1
            if len(examples.setdefault(problem, [])) < EXAMPLES_PER_REASON:
                examples[problem].append(label)
    return dropped, examples


def check_token_budget(pairs: Any, budget: TokenBudget) -> dict[str, Any] | None:
    """The token report of every measured pair (those over the budget too); warnings, and ConfigError when the
    budget drops more than DPO_MAX_DROP_FRACTION. None when nothing is measured."""
    if not budget.pair_lengths:
        return None
    measured = [json.loads(lengths) for lengths, problem in zip(pairs["lengths"], pairs["problem"], strict=True)
                if problem in ("", TOO_LONG)]
    tokens = token_report(measured, budget.max_length)
    for line in budget_warnings(tokens, budget.fewer_image_tokens):
        log.warning(line)
    refuse_too_many_drops(tokens, budget.max_drop_fraction, budget.fewer_image_tokens)
    return tokens


def usable_pairs(pairs: Any, spec: DataSpec, dropped: Counter, tokens: dict[str, Any] | None,
                 budget: TokenBudget) -> Any:
    """The pairs with no problem, without the bookkeeping columns but their keys. ConfigError: fewer than
    `spec.min_pairs`."""
    pairs = pairs.filter(lambda problem: not problem, input_columns="problem")
    pairs = pairs.remove_columns(["problem", "lengths", "row"])
    if len(pairs) < spec.min_pairs:
        hint = f" {budget_warnings(tokens, budget.fewer_image_tokens)[0]}" if tokens and dropped.get(TOO_LONG) else ""
        raise ConfigError(f"{spec.setting}={spec.ref}: only {len(pairs)} usable pairs "
                          f"(dropped: {dict(dropped) or 'none'}).{hint}")
    return pairs


def split_eval(pairs: Any, keys: list[list[str]], spec: DataSpec) -> tuple[Any, Any | None, dict[str, Any] | None]:
    """(train, eval, the split's report): DPO_EVAL_FRACTION of the pairs (at least one, at most DPO_MAX_EVAL_PAIRS,
    within one group of pairs that share an image or a prompt) held out, seeded; no eval split at fraction 0."""
    if spec.eval_fraction <= 0:
        return pairs, None, None
    n_eval = min(spec.max_eval_pairs, max(1, round(len(pairs) * spec.eval_fraction)))
    train, evaluation, report = grouped_split(keys, n_eval, spec.seed)
    return pairs.select(train), pairs.select(evaluation), report


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
