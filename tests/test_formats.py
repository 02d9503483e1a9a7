"""Formatting rows into TRL pairs: per format, order independence, column mapping, image hygiene."""

from __future__ import annotations

import pytest
from PIL import Image

from entrypoint.data.formats import FORMATS, message_text, resolve_format, vqa_context
from entrypoint.data.images import SizeLimit, clean_image, size_limit
from entrypoint.data.prepare import prepare
from entrypoint.errors import ConfigError


def image(size=(40, 30), mode="RGB"):
    return Image.new(mode, size)


def test_rlaif_v_row_becomes_a_conversational_vision_pair():
    fmt, columns = resolve_format("auto", ["ds_name", "image", "question", "chosen", "rejected", "idx"], "")
    assert fmt.name == "rlaif-v"
    pair = fmt.to_pair({"image": image(), "question": "What is red?", "chosen": "A square.",
                        "rejected": "A dog."}, vqa_context([], []))
    assert pair["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                           {"type": "text", "text": "What is red?"}]}]
    assert message_text(pair["chosen"]) == "A square." and message_text(pair["rejected"]) == "A dog."
    assert len(pair["images"]) == 1


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


def test_preference_format_with_a_column_mapping_and_text_only_rows():
    fmt, columns = resolve_format("auto", ["q", "good", "bad"], "prompt=q,chosen=good,rejected=bad")
    assert fmt.name == "preference"
    from entrypoint.data.formats import FormatContext

    pair = fmt.to_pair({"q": "2+2?", "good": "4", "bad": "5"}, FormatContext(columns))
    assert pair == {"prompt": [{"role": "user", "content": "2+2?"}],
                    "chosen": [{"role": "assistant", "content": "4"}],
                    "rejected": [{"role": "assistant", "content": "5"}]}


@pytest.mark.parametrize(("columns", "spec", "message"), [
    (["a", "b"], "", "cannot tell the format from columns"),
    (["q", "good"], "prompt=q,chosen=good,rejected=bad", "dataset has no column(s) bad"),
    (["q"], "prompt", "DPO_DATASET_COLUMNS: bad entry 'prompt'"),
])
def test_format_errors_say_what_is_missing(columns, spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_format("auto", columns, spec)


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


def test_prepare_is_deterministic_reports_drops_and_splits(tmp_path):
    import datasets

    rows = {"question": ["q1", "q2", "q3", "q4", "q5", ""], "chosen": ["a", "b", "same", "c", "d", "e"],
            "rejected": ["x", "y", "same", "z", "w", "v"]}
    path = tmp_path / "data.jsonl"
    rows = {"prompt": rows["question"], "chosen": rows["chosen"], "rejected": rows["rejected"]}
    datasets.Dataset.from_dict(rows).to_json(path)
    kwargs = dict(fmt_name="auto", column_spec="", seed=3, max_samples=None, eval_fraction=0.25,
                  max_eval_pairs=10, limit=SizeLimit(), cache_dir=tmp_path / "cache")
    first = prepare(str(path), "train", **kwargs)
    second = prepare(str(path), "train", **kwargs)
    assert first.report["dropped"] == {"chosen equals rejected": 1, "empty prompt, chosen or rejected": 1}
    assert first.report["pairs"] == 4 and (first.report["train_pairs"], first.report["eval_pairs"]) == (3, 1)
    assert first.train.to_list() == second.train.to_list() and first.eval.to_list() == second.eval.to_list()
    assert "images" not in first.train.column_names


def test_parallel_formatting_gives_the_same_pairs(tmp_path):
    from entrypoint.data.samples import write_sample

    path = write_sample("rlaif-v", tmp_path, rows=40)
    kwargs = dict(fmt_name="auto", column_spec="", seed=1, max_samples=None, eval_fraction=0.1, max_eval_pairs=8,
                  limit=SizeLimit(longest=64), cache_dir=tmp_path)
    serial = prepare(str(path), "train", **kwargs)
    parallel = prepare(str(path), "train", **kwargs, num_proc=2)
    assert serial.train.to_list() == parallel.train.to_list() and serial.report == parallel.report
