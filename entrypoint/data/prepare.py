"""Raw rows -> checked, formatted, measured train/eval pairs, and a report of what was dropped and why."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint.data.budget import TOO_LONG, budget_warnings, refuse_too_many_drops, token_report
from entrypoint.data.formats import FormatContext, message_text, resolve_format, vqa_context
from entrypoint.data.images import SizeLimit, clean_image, image_problem
from entrypoint.data.sources import load_rows
from entrypoint.errors import ConfigError

log = logging.getLogger("entrypoint.data")

MIN_PAIRS = 2  # DPO needs at least one train pair and one batch; fewer is a data problem


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset of pairs
    eval: Any | None
    report: dict[str, Any] = field(default_factory=dict)


def has_images(fmt: Any, columns: dict[str, str], column_names: list[str]) -> bool:
    return "image" in fmt.required or "image" in columns or "image" in column_names


def _problem(pair: dict[str, Any] | None) -> str:
    """Why a pair is unusable, or '' when it is fine."""
    if pair is None:
        return "no rejected answer can be built"
    texts = [message_text(pair[role]) for role in ("prompt", "chosen", "rejected")]
    if not all(t.strip() for t in texts):
        return "empty prompt, chosen or rejected"
    if texts[1].strip() == texts[2].strip():
        return "chosen equals rejected"
    for image in pair.get("images") or []:
        problem = image_problem(image)
        if problem:
            return problem
    return ""


def prepare(ref: str, split: str, *, fmt_name: str, column_spec: str, seed: int, max_samples: int | None,
            eval_fraction: float, max_eval_pairs: int, limit: SizeLimit, cache_dir: Path,
            pair_lengths: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
            max_length: int | None = None, num_proc: int | None = None, max_drop_fraction: float = 1.0,
            fewer_image_tokens: str | None = None, peek: bool = False) -> PreparedData:
    """Load, shuffle, cap, format, check, measure and split. Deterministic for a given seed.

    `pair_lengths` measures a pair in tokens (budget.PairLengths); pairs whose prompt reaches
    `max_length` are dropped, and more than `max_drop_fraction` of them is a ConfigError naming the
    fix (`fewer_image_tokens`: the setting that spends fewer tokens an image). `num_proc`
    (DPO_DATASET_NUM_PROC) formats in parallel processes. `peek` reads only the first `max_samples`
    rows of a Hub dataset (for --dry-run).
    """
    rows = load_rows(ref, split, cache_dir, limit=max_samples if peek else None)
    fmt, columns = resolve_format(fmt_name, rows.column_names, column_spec)
    rows_read = len(rows)
    rows = rows.shuffle(seed=seed)
    if max_samples:
        rows = rows.select(range(min(max_samples, len(rows))))
    context = vqa_context(rows["question"], rows["answer"]) if fmt.name == "vqa-rad" else FormatContext(columns)
    empty = dict.fromkeys(("prompt", "chosen", "rejected", "images") if has_images(fmt, columns, rows.column_names)
                          else ("prompt", "chosen", "rejected"))
    unmeasured = {"prompt_tokens": 0, "chosen_tokens": 0, "rejected_tokens": 0, "image_tokens": []}
    # One JSON column: a list column that is empty in the first rows would make datasets type it null.

    def to_pair(row: dict[str, Any]) -> dict[str, Any]:
        try:
            pair = fmt.to_pair(row, context)
        except OSError:  # an image that cannot be decoded
            pair = None
            problem = "unreadable image"
        else:
            problem = _problem(pair)
        if problem:
            return {**empty, "lengths": json.dumps(unmeasured), "problem": problem}
        if "images" in pair:
            pair["images"] = [clean_image(image, limit) for image in pair["images"]]
        lengths = pair_lengths(pair) if pair_lengths else unmeasured
        if max_length and lengths["prompt_tokens"] >= max_length:
            return {**empty, "lengths": json.dumps(lengths), "problem": TOO_LONG}
        return {**pair, "lengths": json.dumps(lengths), "problem": ""}

    pairs = rows.map(to_pair, remove_columns=rows.column_names, desc="Formatting pairs", num_proc=num_proc)
    problems = Counter(p for p in pairs["problem"] if p)
    tokens = None
    if pair_lengths:
        measured = [json.loads(lengths) for lengths, problem in zip(pairs["lengths"], pairs["problem"], strict=True)
                    if problem in ("", TOO_LONG)]
        tokens = token_report(measured, max_length)
        for line in budget_warnings(tokens, fewer_image_tokens):
            log.warning(line)
        refuse_too_many_drops(tokens, max_drop_fraction, fewer_image_tokens)
    pairs = pairs.filter(lambda problem: not problem, input_columns="problem")
    pairs = pairs.remove_columns(["problem", "lengths"])
    if len(pairs) < MIN_PAIRS:
        hint = f" {budget_warnings(tokens, fewer_image_tokens)[0]}" if tokens and problems.get(TOO_LONG) else ""
        raise ConfigError(f"DPO_DATASET={ref}: only {len(pairs)} usable pairs "
                          f"(dropped: {dict(problems) or 'none'}).{hint}")
    train, evaluation = pairs, None
    if eval_fraction > 0:
        n_eval = min(max_eval_pairs, max(1, round(len(pairs) * eval_fraction)))
        split_pairs = pairs.train_test_split(test_size=n_eval, seed=seed)
        train, evaluation = split_pairs["train"], split_pairs["test"]
    report = {
        "source": ref, "format": fmt.name, "rows_read": rows_read, "rows_used": len(rows),
        "pairs": len(pairs), "dropped": dict(sorted(problems.items())),
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
