"""Dataset formats: how the rows of a known dataset become preference pairs.

A pair is TRL's conversational preference format:
    {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message],
     "images": [image values]}   # images only for vision data; decoded and cleaned by images.py
The prompt holds every turn before the answer (multi-turn rows keep earlier turns as context); the
images go, in order, before the text of the first user turn.
Adding a dataset is one `Format` entry here plus a sample in `samples.py`.

A row that cannot become a pair raises `BadRow`; its text is the reason counted in data_report.json
("missing chosen", "chosen equals rejected", ...). Formatting is a pure function of the row and of
`FormatContext`, which is computed from the whole dataset in an order-independent way: shuffling
the dataset never changes a pair.

Question-answer sets with a yes/no answer (`pope`, lmms-lab/POPE's schema) become pairs too: the right answer
chosen, its opposite rejected. They are evaluation sets first (DPO_EVAL_DATASET): the pair carries the
row's `category`, by which the yes/no figures are broken down.

Two formats build the rejected answer, since their datasets have none (both seeded by DPO_SEED, and
reproducible whatever the row order, because the pick is a hash of the seed and the row's content):
- `vqa-rad`: a closed (yes/no) question gets the opposite answer; an open one another answer given
  to the same question in the dataset, or else any other open answer of the dataset.
- `llava-conversations`: another image's answer to the same question (LAION-CC-SBU's captions share
  a dozen prompts like "Describe the image concisely."), or else another image's answer to any
  question. Answers equal to the chosen one, and answers about the same image file, are never picked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from entrypoint.errors import ConfigError

ROLES = ("prompt", "chosen", "rejected", "image")
IMAGE_MARKER = "<image>"  # LLaVA's place-holder for the image in a conversation's text
_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadRow(Exception):
    """A row that cannot become a pair; str() is the reason."""


Answer = tuple[str, str]  # (answer text, image key): a candidate rejected answer and the image it was about


@dataclass(frozen=True)
class FormatContext:
    """Dataset-wide facts a format may need, e.g. the answers a built rejected answer comes from."""

    columns: dict[str, str] = field(default_factory=dict)  # role -> column, for `preference`
    seed: int = 0
    answer_pool: tuple[Answer, ...] = ()  # every candidate answer of the dataset, sorted
    answers_by_question: dict[str, tuple[Answer, ...]] = field(default_factory=dict)  # the same, per question


@dataclass(frozen=True)
class Format:
    name: str
    required: frozenset[str]  # columns that identify it
    to_pair: Callable[[dict[str, Any], FormatContext], dict[str, Any]]
    description: str
    # Dataset-wide context: (rows, column mapping, seed) -> FormatContext. Default: the mapping and seed.
    context: Callable[[Any, dict[str, str], int], FormatContext] | None = None
    # The chosen answer is the right one (not just the better one): task accuracy is scored against it.
    ground_truth: bool = False
    # Text columns a pair keeps beside prompt/chosen/rejected (e.g. POPE's `category`, which the figures are broken
    # down by); "" where a row has none.
    extra: tuple[str, ...] = ()


# ---- pieces of a pair

def text_value(value: Any, role: str) -> str:
    """A required piece of text, or BadRow naming what is wrong with it."""
    if value is None:
        raise BadRow(f"missing {role}")
    if not isinstance(value, str):
        raise BadRow(f"{role} is not text ({type(value).__name__})")
    if not value.strip():
        raise BadRow(f"empty {role}")
    return value


def _content(text: str, n_images: int, structured: bool) -> Any:
    if not structured:
        return text
    return [*({"type": "image", "text": None} for _ in range(n_images)), {"type": "text", "text": text}]


def make_pair(prompt: str | list[dict[str, str]], chosen: str, rejected: str, images: list[Any] | None = None
              ) -> dict[str, Any]:
    """A TRL pair from a prompt (one question, or the turns before the answer) and two answers.

    With images, every message's content is a list of parts (as TRL's vision collator expects) and the
    images come first in the first user turn.
    """
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if chosen.strip() == rejected.strip():
        raise BadRow("chosen equals rejected")
    images = list(images or [])
    structured = bool(images)
    first_user = next(i for i, turn in enumerate(turns) if turn["role"] == "user")
    messages = [{"role": turn["role"], "content": _content(turn["content"], len(images) if i == first_user else 0,
                                                            structured)} for i, turn in enumerate(turns)]
    pair = {"prompt": messages,
            "chosen": [{"role": "assistant", "content": _content(chosen, 0, structured)}],
            "rejected": [{"role": "assistant", "content": _content(rejected, 0, structured)}]}
    if structured:
        pair["images"] = images
    return pair


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text of a turn's last message, whether its content is a string or a list of parts."""
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("text"))


def _stable_index(key: str, n: int) -> int:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def _pick_other(options: tuple[Answer, ...], own: str, image: str, key: str) -> str | None:
    """A seeded, order-independent pick among `options`: never the row's own answer or image."""
    start = _stable_index(key, len(options)) if options else 0
    for step in range(len(options)):
        answer, about = options[(start + step) % len(options)]
        if answer.strip().lower() != own.strip().lower() and not (image and about == image):
            return answer
    return None


def _question_key(question: str) -> str:
    return " ".join(str(question).replace(IMAGE_MARKER, " ").lower().split())


def answer_context(questions: list[Any], answers: list[Any], images: list[str], seed: int,
                   keep: Callable[[str], bool] = lambda _: True) -> FormatContext:
    """Candidate answers per question and overall, sorted so that row order cannot matter."""
    pool: dict[str, set[Answer]] = {}
    for question, answer, image in zip(questions, answers, images, strict=True):
        if isinstance(question, str) and isinstance(answer, str) and answer.strip() and keep(answer.strip()):
            pool.setdefault(_question_key(question), set()).add((answer.strip(), image))
    every = set().union(*pool.values()) if pool else set()
    return FormatContext(seed=seed, answer_pool=tuple(sorted(every)),
                         answers_by_question={q: tuple(sorted(a)) for q, a in pool.items()})


def _built_rejected(question: str, answer: str, image: str, context: FormatContext) -> str:
    key = f"{context.seed}\x00{question}\x00{answer}\x00{image}"
    wrong = (_pick_other(context.answers_by_question.get(_question_key(question), ()), answer, image, key)
             or _pick_other(context.answer_pool, answer, image, key))
    if wrong is None:
        raise BadRow("no rejected answer can be built")
    return wrong


# ---- the formats

def _images(value: Any) -> list[Any]:
    """An image column's value as a list: one image, a list of them, or none."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _rlaif_v(row: dict[str, Any], _: FormatContext) -> dict[str, Any]:
    return make_pair(text_value(row.get("question"), "question"), text_value(row.get("chosen"), "chosen"),
                     text_value(row.get("rejected"), "rejected"), _images(row.get("image")))


def _rlhf_v(row: dict[str, Any], _: FormatContext) -> dict[str, Any]:
    """RLHF-V keeps question, chosen and rejected in one JSON object, in the `text` column."""
    text = text_value(row.get("text"), "text")
    try:
        item = json.loads(text)
    except json.JSONDecodeError:
        raise BadRow("text is not JSON") from None
    if not isinstance(item, dict):
        raise BadRow("text is not a JSON object with question, chosen and rejected")
    return make_pair(text_value(item.get("question"), "question"), text_value(item.get("chosen"), "chosen"),
                     text_value(item.get("rejected"), "rejected"), _images(row.get("image")))


_YES_NO = {"yes": "no", "no": "yes"}


def _vqa_context(rows: Any, _: dict[str, str], seed: int) -> FormatContext:
    return vqa_context(rows["question"], rows["answer"], seed)


def vqa_context(questions: list[Any], answers: list[Any], seed: int = 0) -> FormatContext:
    """The open answers of the whole dataset (yes/no answers are answered by their opposite)."""
    return answer_context(questions, [str(a) if a is not None else None for a in answers], [""] * len(questions),
                          seed, keep=lambda answer: answer.lower() not in _YES_NO)


def _vqa_rad(row: dict[str, Any], context: FormatContext) -> dict[str, Any]:
    """Closed questions get the opposite yes/no; open ones another answer (see the module's docstring)."""
    question = text_value(row.get("question"), "question")
    answer = row.get("answer")
    answer = text_value(str(answer) if isinstance(answer, (int, float)) else answer, "answer").strip()
    normalized = answer.lower()
    if normalized in _YES_NO:
        wrong = _YES_NO[normalized]
        wrong = wrong.capitalize() if answer[:1].isupper() else wrong
    else:
        wrong = _built_rejected(question, answer, "", context)
    return make_pair(question, answer, wrong, _images(row.get("image")))


def _pope(row: dict[str, Any], _: FormatContext) -> dict[str, Any]:
    """A yes/no question about the image: the right answer chosen, the other one rejected."""
    question = text_value(row.get("question"), "question")
    answer = text_value(row.get("answer"), "answer").strip()
    if answer.lower() not in _YES_NO:
        raise BadRow("answer is not yes or no")
    category = row.get("category")
    wrong = _YES_NO[answer.lower()]
    pair = make_pair(question, answer, wrong.capitalize() if answer[:1].isupper() else wrong,
                     _images(row.get("image")))
    return {**pair, "category": category.strip() if isinstance(category, str) else ""}


def _turns(conversation: Any) -> list[dict[str, str]]:
    """LLaVA's [{"from": "human"|"gpt", "value": ...}] as chat messages, image markers taken out."""
    if conversation is None:
        raise BadRow("missing conversations")
    if not isinstance(conversation, list) or not all(isinstance(t, dict) for t in conversation):
        raise BadRow("conversations is not a list of turns")
    turns = []
    for turn in conversation:
        role = _SPEAKERS.get(str(turn.get("from", "")).lower())
        if role is None:
            raise BadRow("conversation turn from an unknown speaker (expected human or gpt)")
        text = text_value(turn.get("value"), f"{role} turn").replace(IMAGE_MARKER, "").strip()
        turns.append({"role": role, "content": text_value(text, f"{role} turn")})
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        raise BadRow("conversation does not end with a human question and a gpt answer")
    return turns


def _image_key(value: Any) -> str:
    return "\x00".join(str(v) for v in _images(value))


def _conversation_context(rows: Any, _: dict[str, str], seed: int) -> FormatContext:
    questions, answers = [], []
    for conversation in rows["conversations"]:
        try:
            turns = _turns(conversation)
            questions.append(turns[-2]["content"])
            answers.append(turns[-1]["content"])
        except BadRow:
            questions.append(None)
            answers.append(None)
    images = [_image_key(v) for v in rows["image"]] if "image" in rows.column_names else [""] * len(questions)
    return answer_context(questions, answers, images, seed)


def _llava_conversations(row: dict[str, Any], context: FormatContext) -> dict[str, Any]:
    """The last gpt answer is chosen, every turn before it is the prompt; the rejected answer is built."""
    turns = _turns(row.get("conversations"))
    question, answer = turns[-2]["content"], turns[-1]["content"]
    rejected = _built_rejected(question, answer, _image_key(row.get("image")), context)
    return make_pair(turns[:-1], answer, rejected, _images(row.get("image")))


def _message_turns(value: Any, role: str) -> list[dict[str, str]]:
    """TRL's conversational format: [{"role": ..., "content": str or [parts]}, ...] with texts checked."""
    turns = []
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise BadRow(f"{role} is not a list of chat messages with roles system, user or assistant")
        content = message.get("content")
        if isinstance(content, list):  # parts: keep the text, the images come from the image column
            content = " ".join(str(part.get("text") or "") for part in content if isinstance(part, dict)).strip()
        turns.append({"role": message["role"], "content": text_value(content, f"{role} message")})
    if not turns:
        raise BadRow(f"empty {role}")
    return turns


def _prompt(value: Any) -> str | list[dict[str, str]]:
    if isinstance(value, list):
        turns = _message_turns(value, "prompt")
        if turns[-1]["role"] != "user" or not any(t["role"] == "user" for t in turns):
            raise BadRow("prompt does not end with a user message")
        return turns
    return text_value(value, "prompt")


def _answer(value: Any, role: str) -> str:
    if isinstance(value, list):  # [{"role": "assistant", "content": ...}]
        turns = _message_turns(value, role)
        if turns[-1]["role"] != "assistant":
            raise BadRow(f"{role} does not end with an assistant message")
        return turns[-1]["content"]
    return text_value(value, role)


def _preference(row: dict[str, Any], context: FormatContext) -> dict[str, Any]:
    columns = context.columns or {role: role for role in ("prompt", "chosen", "rejected")}
    image_column = _preference_image_column(columns, row)
    return make_pair(_prompt(row.get(columns["prompt"])), _answer(row.get(columns["chosen"]), "chosen"),
                     _answer(row.get(columns["rejected"]), "rejected"),
                     _images(row.get(image_column)) if image_column else [])


# In the order `auto` tries them: the most specific columns first.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("rlaif-v", frozenset({"image", "question", "chosen", "rejected"}), _rlaif_v,
               "openbmb/RLAIF-V-Dataset: image, question, chosen, rejected."),
        Format("rlhf-v", frozenset({"image", "text"}), _rlhf_v,
               "openbmb/RLHF-V-Dataset: image, and `text` holding a JSON object with question, chosen, rejected."),
        Format("pope", frozenset({"question_id", "question", "answer", "image", "category"}), _pope,
               "lmms-lab/POPE (object hallucination): question_id, question, answer (yes or no), image, category; "
               "the rejected answer is the other one. Scored by category as an eval set (DPO_EVAL_DATASET).",
               ground_truth=True, extra=("category",)),
        Format("vqa-rad", frozenset({"image", "question", "answer"}), _vqa_rad,
               "flaviagiammarino/vqa-rad: image, question, answer; the rejected answer is built.",
               context=_vqa_context, ground_truth=True),
        Format("llava-conversations", frozenset({"conversations"}), _llava_conversations,
               "LLaVA conversation JSON: id, image (a path under DPO_IMAGE_DIR or beside the JSON), conversations "
               "of human/gpt turns; the rejected answer is built.", context=_conversation_context),
        Format("preference", frozenset({"prompt", "chosen", "rejected"}), _preference,
               "Any preference set: prompt (text or chat messages), chosen, rejected (+ image or images); "
               "other names via DPO_DATASET_COLUMNS."),
    )
}


def parse_columns(spec: str, setting: str = "DPO_DATASET") -> dict[str, str]:
    """`prompt=question,chosen=good` -> {"prompt": "question", "chosen": "good"}. `setting`: the dataset setting
    the mapping belongs to (DPO_DATASET or DPO_EVAL_DATASET), named with its _COLUMNS in errors."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        role, sep, column = item.partition("=")
        if not sep or role.strip() not in ROLES or not column.strip():
            raise ConfigError(f"{setting}_COLUMNS: bad entry {item!r}; expected role=column with role in "
                              f"{', '.join(ROLES)}")
        mapping[role.strip()] = column.strip()
    return mapping


def _known_formats() -> str:
    return "; ".join(f"{f.name} ({', '.join(sorted(f.required))})" for f in FORMATS.values())


def resolve_format(name: str, columns: list[str], column_spec: str, setting: str = "DPO_DATASET",
                   ) -> tuple[Format, dict[str, str]]:
    """Pick the format (given or detected from the columns) and check the columns it needs exist. `setting`: the
    dataset setting whose _FORMAT and _COLUMNS errors name."""
    mapping = parse_columns(column_spec, setting)
    if name == "auto":
        if mapping:
            name = "preference"
        else:
            matches = [f for f in FORMATS.values() if f.required <= set(columns)]
            if not matches:
                raise ConfigError(f"{setting}_FORMAT=auto: no known format has the columns {sorted(columns)}; "
                                  f"formats and the columns they need: {_known_formats()}. Set "
                                  f"{setting}_COLUMNS=prompt=...,chosen=...,rejected=...[,image=...] for other names")
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
        raise ConfigError(f"{setting}: the dataset has no column(s) {', '.join(missing)} needed by format {name!r} "
                          f"(columns: {', '.join(sorted(columns))})")
    return fmt, mapping


def _preference_image_column(columns: dict[str, str], column_names: Any) -> str | None:
    """`preference` reads images from the mapped column, else from `images` or `image` when there is one."""
    return columns.get("image") or next((c for c in ("images", "image") if c in column_names), None)


def image_column(fmt: Format, columns: dict[str, str], column_names: list[str]) -> str | None:
    """The column a format reads images from, or None for text-only data."""
    if fmt.name == "preference":
        return _preference_image_column(columns, column_names)
    return "image" if "image" in column_names else None


def format_context(fmt: Format, rows: Any, columns: dict[str, str], seed: int) -> FormatContext:
    if fmt.context is None:
        return FormatContext(columns=columns, seed=seed)
    return fmt.context(rows, columns, seed)
