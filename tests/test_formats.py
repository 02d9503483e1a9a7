"""Formatting rows into TRL pairs: every format, multi-turn and multi-image rows, the reasons a row is
bad, the seeded rejected-answer builders (deterministic, order-independent), format detection."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from entrypoint.data.formats import (
    FORMATS,
    BadRow,
    FormatContext,
    answer_context,
    make_pair,
    message_text,
    resolve_format,
    vqa_context,
)
from entrypoint.data.images import SizeLimit, clean_image, size_limit
from entrypoint.errors import ConfigError


def image(size=(40, 30), mode="RGB"):
    return Image.new(mode, size)


def reason(fmt: str, row: dict, context: FormatContext | None = None) -> str:
    with pytest.raises(BadRow) as bad:
        FORMATS[fmt].to_pair(row, context or FormatContext())
    return str(bad.value)


def test_rlaif_v_row_becomes_a_conversational_vision_pair():
    fmt, _ = resolve_format("auto", ["ds_name", "image", "question", "chosen", "rejected", "idx"], "")
    assert fmt.name == "rlaif-v"
    pair = fmt.to_pair({"image": image(), "question": "What is red?", "chosen": "A square.",
                        "rejected": "A dog."}, FormatContext())
    assert pair["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                           {"type": "text", "text": "What is red?"}]}]
    assert message_text(pair["chosen"]) == "A square." and message_text(pair["rejected"]) == "A dog."
    assert len(pair["images"]) == 1


def test_rlhf_v_reads_question_and_answers_from_the_json_text_column():
    fmt, _ = resolve_format("auto", ["ds_name", "image", "text", "origin_dataset", "origin_split", "idx",
                                     "image_path"], "")
    assert fmt.name == "rlhf-v"
    text = json.dumps({"question": "What is on the table?", "chosen": "A cup.", "rejected": "A cat and a cup."})
    pair = fmt.to_pair({"image": image(), "text": text, "idx": 7}, FormatContext())
    assert message_text(pair["prompt"]) == "What is on the table?" and message_text(pair["rejected"]) == \
        "A cat and a cup."
    assert reason("rlhf-v", {"image": image(), "text": "{not json"}) == "text is not JSON"
    assert reason("rlhf-v", {"image": image(), "text": "[1, 2]"}).startswith("text is not a JSON object")
    assert reason("rlhf-v", {"image": image(), "text": json.dumps({"question": 5, "chosen": "a",
                                                                   "rejected": "b"})}) == "question is not text (int)"
    assert reason("rlhf-v", {"image": image(), "text": json.dumps({"question": "q", "chosen": "a"})}) == \
        "missing rejected"


@pytest.mark.parametrize(("row", "expected"), [
    ({"question": None, "chosen": "a", "rejected": "b"}, "missing question"),
    ({"question": "  ", "chosen": "a", "rejected": "b"}, "empty question"),
    ({"question": "q", "chosen": "", "rejected": "b"}, "empty chosen"),
    ({"question": "q", "chosen": ["a"], "rejected": "b"}, "chosen is not text (list)"),
    ({"question": "q", "chosen": "a"}, "missing rejected"),
    ({"question": "q", "chosen": "Same answer.", "rejected": " Same answer. "}, "chosen equals rejected"),
])
def test_each_bad_row_has_its_reason(row, expected):
    assert reason("rlaif-v", {"image": image(), **row}) == expected


POPE_COLUMNS = ["id", "question_id", "question", "answer", "image_source", "image", "category"]  # lmms-lab/POPE's


def test_pope_rows_are_yes_no_pairs_that_keep_their_category():
    fmt, _ = resolve_format("auto", POPE_COLUMNS, "")
    assert fmt.name == "pope" and fmt.ground_truth and fmt.extra == ("category",)  # not vqa-rad, whose columns it has
    row = {"id": "0", "question_id": "1", "question": "Is there a dog in the image?", "answer": "no",
           "image_source": "COCO_val2014_000000310196", "image": image(), "category": "adversarial"}
    pair = fmt.to_pair(row, FormatContext())
    assert message_text(pair["prompt"]) == "Is there a dog in the image?" and len(pair["images"]) == 1
    assert (message_text(pair["chosen"]), message_text(pair["rejected"]), pair["category"]) == ("no", "yes",
                                                                                               "adversarial")
    assert message_text(fmt.to_pair({**row, "answer": "Yes"}, FormatContext())["rejected"]) == "No"
    assert fmt.to_pair({**row, "category": None}, FormatContext())["category"] == ""
    assert reason("pope", {**row, "answer": "maybe"}) == "answer is not yes or no"
    assert reason("pope", {**row, "question": None}) == "missing question"


def test_vqa_rad_builds_rejected_answers_independent_of_row_order():
    questions = ["Is there a lesion?", "What organ is shown?", "What organ is shown?", "Where is the mass?"]
    answers = ["Yes", "lung", "brain", "left side"]
    fmt = FORMATS["vqa-rad"]
    forward = vqa_context(questions, answers)
    backward = vqa_context(questions[::-1], answers[::-1])
    assert forward == backward
    rows = [{"image": image(), "question": q, "answer": a} for q, a in zip(questions, answers, strict=True)]
    pairs = [fmt.to_pair(row, forward) for row in rows]
    assert message_text(pairs[0]["rejected"]) == "No"  # closed: the opposite, same capitalisation
    assert message_text(pairs[1]["rejected"]) == "brain"  # open: another answer to the same question
    assert message_text(pairs[2]["rejected"]) == "lung"
    assert message_text(pairs[3]["rejected"]) in {"lung", "brain"}  # only answer to its question: any other
    lonely = vqa_context(["Where?"], ["here"])
    assert reason("vqa-rad", {"image": image(), "question": "Where?", "answer": "here"}, lonely) == \
        "no rejected answer can be built"


def _picks(fmt: str, rows: list[dict], context: FormatContext) -> list[str]:
    return [message_text(FORMATS[fmt].to_pair(row, context)["rejected"]) for row in rows]


def test_built_rejected_answers_are_seeded_and_reproducible_whatever_the_row_order():
    questions = ["What organ is shown?"] * 30
    answers = [f"organ {i}" for i in range(30)]
    rows = [{"image": image(), "question": q, "answer": a} for q, a in zip(questions, answers, strict=True)]
    shuffled = list(zip(questions, answers, strict=True))
    random.Random(0).shuffle(shuffled)
    seed_1 = vqa_context(questions, answers, seed=1)
    assert seed_1 == vqa_context([q for q, _ in shuffled], [a for _, a in shuffled], seed=1)
    first = _picks("vqa-rad", rows, seed_1)
    assert first == _picks("vqa-rad", rows, vqa_context(questions, answers, seed=1))
    assert first != _picks("vqa-rad", rows, vqa_context(questions, answers, seed=2))  # the seed matters
    assert all(wrong != row["answer"] for wrong, row in zip(first, rows, strict=True))


def conversation(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": speaker, "value": text} for speaker, text in turns]


LLAVA_ROWS = [
    {"id": "1", "image": "00000/1.jpg", "conversations": conversation(
        ("human", "<image>\nDescribe the image concisely."), ("gpt", "a red square"))},
    {"id": "2", "image": "00000/2.jpg", "conversations": conversation(
        ("human", "Describe the image concisely.\n<image>"), ("gpt", "two blue circles"))},
    {"id": "3", "image": "00000/3.jpg", "conversations": conversation(
        ("human", "<image>\nWhat is shown?"), ("gpt", "a green triangle"),
        ("human", "How many are there?"), ("gpt", "One."))},
    {"id": "4", "image": "00000/1.jpg", "conversations": conversation(  # the same image as row 1
        ("human", "Describe the image concisely."), ("gpt", "a square, red"))},
]


def llava_context(rows, seed=0):
    import datasets

    return FORMATS["llava-conversations"].context(datasets.Dataset.from_list(rows), {}, seed)


def test_llava_conversations_pair_another_images_answer_to_the_same_question():
    fmt, _ = resolve_format("auto", ["id", "image", "conversations"], "")
    assert fmt.name == "llava-conversations"
    context = llava_context(LLAVA_ROWS)
    pair = fmt.to_pair(LLAVA_ROWS[0], context)
    assert pair["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                           {"type": "text", "text": "Describe the image concisely."}]}]
    assert message_text(pair["chosen"]) == "a red square"
    assert message_text(pair["rejected"]) == "two blue circles"  # never "a square, red": that is the same image
    assert pair["images"] == ["00000/1.jpg"]
    assert message_text(fmt.to_pair(LLAVA_ROWS[1], context)["rejected"]) == "a red square"


def test_llava_multi_turn_keeps_earlier_turns_as_context():
    pair = FORMATS["llava-conversations"].to_pair(LLAVA_ROWS[2], llava_context(LLAVA_ROWS))
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]
    assert pair["prompt"][0]["content"][0] == {"type": "image", "text": None}  # the image in the first turn
    assert message_text(pair["prompt"]) == "How many are there?" and message_text(pair["chosen"]) == "One."
    assert message_text(pair["rejected"]) in {"a red square", "two blue circles", "a square, red"}  # any other


def test_llava_context_is_order_independent_and_seeded():
    rows = [{"id": str(i), "image": f"{i}.jpg", "conversations": conversation(
        ("human", "<image>\nDescribe the image concisely."), ("gpt", f"caption {i}"))} for i in range(40)]
    context = llava_context(rows, seed=5)
    assert context == llava_context(rows[::-1], seed=5)
    fmt = FORMATS["llava-conversations"]
    picks = [message_text(fmt.to_pair(row, context)["rejected"]) for row in rows]
    assert picks != [message_text(fmt.to_pair(row, llava_context(rows, seed=6))["rejected"]) for row in rows]
    assert all(pick != f"caption {i}" for i, pick in enumerate(picks))


@pytest.mark.parametrize(("turns", "expected"), [
    (None, "missing conversations"),
    ("hello", "conversations is not a list of turns"),
    (conversation(("human", "<image>\nHi")), "conversation does not end with a human question and a gpt answer"),
    (conversation(("robot", "Hi"), ("gpt", "Hello")), "conversation turn from an unknown speaker"),
    (conversation(("human", "<image>"), ("gpt", "Hello")), "empty user turn"),
])
def test_llava_bad_conversations_have_their_reason(turns, expected):
    assert reason("llava-conversations", {"id": "x", "image": "a.jpg", "conversations": turns},
                  llava_context(LLAVA_ROWS)).startswith(expected)


def test_preference_format_with_a_column_mapping_and_text_only_rows():
    fmt, columns = resolve_format("auto", ["q", "good", "bad"], "prompt=q,chosen=good,rejected=bad")
    assert fmt.name == "preference"
    pair = fmt.to_pair({"q": "2+2?", "good": "4", "bad": "5"}, FormatContext(columns))
    assert pair == {"prompt": [{"role": "user", "content": "2+2?"}],
                    "chosen": [{"role": "assistant", "content": "4"}],
                    "rejected": [{"role": "assistant", "content": "5"}]}


def test_preference_multi_turn_conversational_rows():
    """TRL's conversational format: earlier turns (a system prompt too) stay in the prompt."""
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "4"}],
           "rejected": [{"role": "assistant", "content": "5"}]}
    pair = FORMATS["preference"].to_pair(row, FormatContext())
    assert pair["prompt"] == prompt and message_text(pair["chosen"]) == "4"
    bad = {**row, "prompt": prompt[:3]}
    assert reason("preference", bad) == "prompt does not end with a user message"
    assert reason("preference", {**row, "prompt": [{"role": "robot", "content": "x"}]}).startswith(
        "prompt is not a list of chat messages")


def test_preference_rows_with_several_images_put_them_all_in_the_first_user_turn():
    fmt, columns = resolve_format("auto", ["prompt", "chosen", "rejected", "images"], "")
    pair = fmt.to_pair({"prompt": "Which is larger?", "chosen": "The left one.", "rejected": "The right one.",
                        "images": [image(), image()]}, FormatContext(columns))
    parts = pair["prompt"][0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"] and len(pair["images"]) == 2


def test_make_pair_places_images_once_in_the_first_user_turn():
    pair = make_pair([{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}], "a", "b", ["img"])
    assert pair["prompt"][0]["content"] == [{"type": "text", "text": "sys"}]
    assert pair["prompt"][1]["content"][0] == {"type": "image", "text": None}


def test_answer_context_skips_what_cannot_be_an_answer():
    context = answer_context(["q", "q", None, "q"], ["a", None, "c", "  "], ["", "", "", ""], seed=0)
    assert context.answer_pool == (("a", ""),)


@pytest.mark.parametrize(("columns", "spec", "message"), [
    (["a", "b"], "", "DPO_DATASET_FORMAT=auto: no known format has the columns ['a', 'b']; formats and the columns "
                     "they need: rlaif-v (chosen, image, question, rejected); rlhf-v (image, text); "),
    (["q", "good"], "prompt=q,chosen=good,rejected=bad", "dataset has no column(s) bad"),
    (["q"], "prompt", "DPO_DATASET_COLUMNS: bad entry 'prompt'"),
])
def test_format_errors_say_what_is_missing(columns, spec, message):
    with pytest.raises(ConfigError) as error:
        resolve_format("auto", columns, spec)
    assert message in str(error.value)
    if not spec:
        assert "llava-conversations (conversations)" in str(error.value) and "DPO_DATASET_COLUMNS" in str(error.value)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_images_become_rgb_and_shrink_keeping_aspect(mode):
    cleaned = clean_image(image((400, 100), mode), SizeLimit(longest=64))
    assert cleaned.mode == "RGB" and cleaned.size == (64, 16)
    assert clean_image(image((20, 10)), SizeLimit(longest=64)).size == (20, 10)  # never enlarged
    assert clean_image(image((400, 200)), SizeLimit(shortest=50)).size == (100, 50)


def test_size_limit_reads_the_processor():
    class NextLike:
        image_grid_pinpoints = [[336, 672], [672, 336], [672, 672]]

    class ClipLike:
        image_grid_pinpoints = None
        size = {"shortest_edge": 336}

    assert size_limit(NextLike()) == SizeLimit(longest=672)
    assert size_limit(ClipLike()) == SizeLimit(shortest=336)
