"""Token budget: how long each pair is as TRL will build it, and what DPO_MAX_LENGTH does to the data.

TRL cuts each prompt+completion to `max_length` from the end. A long answer is merely shortened,
but a prompt whose image tokens reach `max_length` makes the model fail mid-run ("image features
and image tokens do not match"), hours in on real data. So every pair is measured while the data
is prepared: rendered with TRL's own chat-template code, tokenized as its collator tokenizes
(no special tokens added), each image counted with the real processor (models/image_tokens.py).
Pairs whose prompt cannot fit are dropped; the report gives the length distribution, the drops,
the answers that will be cut, and the DPO_MAX_LENGTH that would keep them.
"""

from __future__ import annotations

import math
from typing import Any

from entrypoint.errors import ConfigError

TOO_LONG = "prompt (with image tokens) reaches DPO_MAX_LENGTH"
ROUND_TO = 64  # suggested lengths are rounded up to this (GPU-friendly shapes)


class PairLengths:
    """Callable: a pair's prompt, chosen and rejected lengths in tokens, and each image's tokens."""

    def __init__(self, processor: Any, family: Any = None):
        """`family` (models/families.py): where it says every image costs the same, one is measured."""
        from entrypoint.models.image_tokens import ImageTokens, same_for_every_size

        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        fixed = bool(family and same_for_every_size(family, processor))
        self.image_tokens = ImageTokens(processor, fixed) if self.tokenizer is not processor else None

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, pair: dict[str, Any], sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        """`sizes`: each image's (width, height), when `pair["images"]` holds stored bytes, not images."""
        from trl.data_utils import apply_chat_template, prepare_multimodal_messages

        images = pair.get("images") or []
        sizes = [image.size for image in images] if sizes is None else sizes
        example = {key: pair[key] for key in ("prompt", "chosen", "rejected")}
        if self.image_tokens is not None:  # as DataCollatorForVisionPreference does
            example = {"prompt": prepare_multimodal_messages(example["prompt"], images=images),
                       "chosen": prepare_multimodal_messages(example["chosen"]),
                       "rejected": prepare_multimodal_messages(example["rejected"])}
        texts = apply_chat_template(example, self.processor)
        per_image = [self.image_tokens(size) for size in sizes] if self.image_tokens else []
        expanded = sum(n - self.image_tokens.placeholder for n in per_image)  # the prompt text holds placeholders
        return {"prompt_tokens": self._count(texts["prompt"]) + expanded,
                "chosen_tokens": self._count(texts["chosen"]), "rejected_tokens": self._count(texts["rejected"]),
                "image_tokens": per_image}


def spread(values: list[int]) -> dict[str, int]:
    """p50, p95 (nearest rank) and max of `values`."""
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50": rank(0.5), "p95": rank(0.95), "max": ordered[-1]}


def _rounded(length: int) -> int:
    """The smallest multiple of ROUND_TO that keeps a sequence of `length` whole."""
    return ROUND_TO * math.ceil(length / ROUND_TO)


def token_report(measured: list[dict[str, Any]], max_length: int | None) -> dict[str, Any]:
    """What DPO_MAX_LENGTH does to the measured pairs (every pair that passed the other checks)."""
    totals = [m["prompt_tokens"] + max(m["chosen_tokens"], m["rejected_tokens"]) for m in measured]
    prompts = [m["prompt_tokens"] for m in measured]
    images = [n for m in measured for n in m["image_tokens"]]
    too_long = sum(p >= max_length for p in prompts) if max_length else 0
    cut = sum(p < max_length < t for p, t in zip(prompts, totals, strict=True)) if max_length else 0
    pair_spread = spread(totals)
    answers = [max(m["chosen_tokens"], m["rejected_tokens"]) for m in measured]
    return {"max_length": max_length, "pairs_measured": len(measured),
            "pair_tokens": pair_spread, "prompt_tokens": spread(prompts), "answer_tokens": spread(answers),
            "image_tokens_per_image": {**spread(images), "images": len(images)},
            "dropped_prompt_too_long": too_long, "answers_cut": cut,
            "length_for_p95": _rounded(pair_spread["p95"]), "length_for_all": _rounded(pair_spread["max"])}


def _share(count: int, total: int) -> str:
    return f"{count} of {total} pairs ({100 * count / max(total, 1):.1f}%)"


def budget_warnings(report: dict[str, Any], fewer_image_tokens: str | None) -> list[str]:
    """One line per problem, each naming the setting that fixes it."""
    lines, total, max_length = [], report["pairs_measured"], report["max_length"]
    images = f", or fewer tokens an image with {fewer_image_tokens}" if fewer_image_tokens else ""
    if report["dropped_prompt_too_long"]:
        lines.append(f"token budget: {_share(report['dropped_prompt_too_long'], total)} dropped: the prompt with "
                     f"its image tokens reaches DPO_MAX_LENGTH={max_length} (p95 of prompts "
                     f"{report['prompt_tokens']['p95']}, longest {report['prompt_tokens']['max']}); "
                     f"DPO_MAX_LENGTH={report['length_for_all']} keeps every pair{images}")
    if report["answers_cut"]:
        lines.append(f"token budget: {_share(report['answers_cut'], total)} have a chosen or rejected answer cut "
                     f"by DPO_MAX_LENGTH={max_length} (p95 of prompt + answer {report['pair_tokens']['p95']}); "
                     f"DPO_MAX_LENGTH={report['length_for_all']} keeps them whole")
    return lines


def refuse_too_many_drops(report: dict[str, Any], max_drop_fraction: float, fewer_image_tokens: str | None) -> None:
    """A run that would train on far fewer pairs than asked is not the run the user wanted: exit 2 now."""
    dropped, total = report["dropped_prompt_too_long"], report["pairs_measured"]
    if total and dropped / total > max_drop_fraction:
        images = f", spend fewer tokens an image ({fewer_image_tokens})" if fewer_image_tokens else ""
        raise ConfigError(
            f"DPO_MAX_LENGTH={report['max_length']} drops {_share(dropped, total)}, more than "
            f"DPO_MAX_DROP_FRACTION={max_drop_fraction}: their prompt with its image tokens reaches it (longest "
            f"{report['prompt_tokens']['max']} tokens). Set DPO_MAX_LENGTH={report['length_for_all']}{images}, "
            f"or raise DPO_MAX_DROP_FRACTION to train on the rest")
