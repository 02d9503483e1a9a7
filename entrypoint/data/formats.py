"""Dataset formats: how the rows of a known dataset become preference pairs.

A pair is TRL's conversational preference format:
    {"prompt": [user message], "chosen": [assistant message], "rejected": [assistant message],
     "images": [PIL images]}   # images only for vision data
Adding a dataset is one `Format` entry here plus a sample in `samples.py`.

Formatting is a pure function of the row and of `FormatContext`, which is computed from the whole
dataset in an order-independent way: shuffling the dataset never changes a pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from entrypoint.errors import ConfigError

ROLES = ("prompt", "chosen", "rejected", "image")


@dataclass(frozen=True)
class FormatContext:
    """Dataset-wide facts a format may need, e.g. the answers vqa-rad's wrong answers come from."""

    columns: dict[str, str] = field(default_factory=dict)  # role -> column, for `preference`
    answer_pool: tuple[str, ...] = ()  # sorted distinct open answers, for `vqa-rad`
    answers_by_question: dict[str, tuple[str, ...]] = field(default_factory=dict)  # same, per question


@dataclass(frozen=True)
class Format:
    name: str
    required: frozenset[str]  # columns that identify it
    to_pair: Callable[[dict[str, Any], FormatContext], dict[str, Any] | None]
    description: str


def user_turn(text: str, with_image: bool) -> list[dict[str, Any]]:
    if not with_image:
        return [{"role": "user", "content": text}]
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}]


def assistant_turn(text: str, with_image: bool) -> list[dict[str, Any]]:
    if not with_image:
        return [{"role": "assistant", "content": text}]
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text of a one-message turn, whether its content is a string or a list of parts."""
    content = messages[0]["content"]
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("text"))


def make_pair(prompt: str, chosen: str, rejected: str, image: Any = None) -> dict[str, Any]:
    with_image = image is not None
    pair = {"prompt": user_turn(prompt, with_image), "chosen": assistant_turn(chosen, with_image),
            "rejected": assistant_turn(rejected, with_image)}
    if with_image:
        pair["images"] = [image]
    return pair


def _rlaif_v(row: dict[str, Any], _: FormatContext) -> dict[str, Any] | None:
    return make_pair(row["question"], row["chosen"], row["rejected"], row["image"])


_YES_NO = {"yes": "no", "no": "yes"}


def _question_key(question: str) -> str:
    return " ".join(str(question).lower().split())


def vqa_context(questions: list[str], answers: list[str]) -> FormatContext:
    """The open answers of the whole dataset, sorted so that row order cannot matter."""
    pool: dict[str, set[str]] = {}
    for question, answer in zip(questions, answers, strict=True):
        answer = str(answer).strip()
        if answer and answer.lower() not in _YES_NO:
            pool.setdefault(_question_key(question), set()).add(answer)
    return FormatContext(answer_pool=tuple(sorted(set().union(*pool.values()))),
                         answers_by_question={q: tuple(sorted(a)) for q, a in pool.items()})


def _stable_pick(options: list[str], key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def _vqa_rad(row: dict[str, Any], context: FormatContext) -> dict[str, Any] | None:
    """Closed questions get the opposite yes/no; open ones another answer to the same question
    (any other open answer in the dataset when the question has only one).

    The wrong answer is picked by a hash of the row, not by position, so it is reproducible
    whatever the row order.
    """
    answer = str(row["answer"]).strip()
    normalized = answer.lower()
    if normalized in _YES_NO:
        wrong = _YES_NO[normalized]
        wrong = wrong.capitalize() if answer[:1].isupper() else wrong
    else:
        same_question = context.answers_by_question.get(_question_key(row["question"]), ())
        options = ([a for a in same_question if a.lower() != normalized]
                   or [a for a in context.answer_pool if a.lower() != normalized])
        if not options:
            return None
        wrong = _stable_pick(options, f"{row['question']}\x00{answer}")
    return make_pair(row["question"], answer, wrong, row["image"])


def _preference(row: dict[str, Any], context: FormatContext) -> dict[str, Any] | None:
    columns = context.columns or {role: role for role in ("prompt", "chosen", "rejected")}
    image_column = columns.get("image") or ("image" if "image" in row else None)
    image = row.get(image_column) if image_column else None
    if isinstance(image, list):  # an `images` column with one image per row
        image = image[0] if image else None
    return make_pair(str(row[columns["prompt"]]), str(row[columns["chosen"]]), str(row[columns["rejected"]]),
                     image)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("rlaif-v", frozenset({"image", "question", "chosen", "rejected"}), _rlaif_v,
               "openbmb/RLAIF-V-Dataset: image, question, chosen, rejected."),
        Format("vqa-rad", frozenset({"image", "question", "answer"}), _vqa_rad,
               "flaviagiammarino/vqa-rad: image, question, answer; the rejected answer is built."),
        Format("preference", frozenset({"prompt", "chosen", "rejected"}), _preference,
               "Any preference set: prompt, chosen, rejected (+ image); other names via DPO_DATASET_COLUMNS."),
    )
}


def parse_columns(spec: str) -> dict[str, str]:
    """`prompt=question,chosen=good` -> {"prompt": "question", "chosen": "good"}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        role, sep, column = item.partition("=")
        if not sep or role.strip() not in ROLES or not column.strip():
            raise ConfigError(f"DPO_DATASET_COLUMNS: bad entry {item!r}; expected role=column with role in "
                              f"{', '.join(ROLES)}")
        mapping[role.strip()] = column.strip()
    return mapping


def resolve_format(name: str, columns: list[str], column_spec: str) -> tuple[Format, dict[str, str]]:
    """Pick the format (given or detected from the columns) and check the columns it needs exist."""
    mapping = parse_columns(column_spec)
    if name == "auto":
        if mapping:
            name = "preference"
        else:
            matches = [f for f in FORMATS.values() if f.required <= set(columns)]
            if not matches:
                raise ConfigError(f"DPO_DATASET_FORMAT: cannot tell the format from columns {sorted(columns)}; "
                                  "set DPO_DATASET_COLUMNS=prompt=...,chosen=...,rejected=...[,image=...]")
            name = matches[0].name
    fmt = FORMATS[name]
    if name == "preference":
        mapping = {role: mapping.get(role, role) for role in ("prompt", "chosen", "rejected")} | (
            {"image": mapping["image"]} if "image" in mapping else {})
        needed = set(mapping.values())
    else:
        needed = set(fmt.required)
    missing = sorted(needed - set(columns))
    if missing:
        raise ConfigError(f"dataset has no column(s) {', '.join(missing)} needed by format {name!r} "
                          f"(columns: {', '.join(sorted(columns))})")
    return fmt, mapping
