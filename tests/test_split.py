"""The eval split by group, and the eval set's leak guard: no image and no prompt on both sides of the line between
training and evaluation, seeded, deterministic, and the eval share met within one group."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import datasets
import pytest
from PIL import Image

from entrypoint.data.images import SizeLimit
from entrypoint.data.prepare import IN_EVAL_SET, DataSpec, RowRules, prepare
from entrypoint.data.samples import write_sample
from entrypoint.data.split import IMAGE, eval_groups, grouped_split, groups, pair_keys
from entrypoint.errors import ConfigError

RULES = RowRules(limit=SizeLimit(longest=64))


def test_pairs_linked_by_any_shared_key_are_one_group():
    keys = [["image:a", "prompt:1"], ["image:b", "prompt:2"], ["image:a", "prompt:3"], ["image:c", "prompt:2"],
            ["image:d", "prompt:4"], ["image:e", "prompt:3"]]
    # 0-2 share image a, 2-5 prompt 3; 1-3 share prompt 2; 4 is alone
    assert groups(keys) == [0, 1, 0, 1, 2, 0]


def test_whole_groups_fill_the_eval_share_and_one_group_can_only_overshoot_by_less_than_itself():
    group_of = [0] * 5 + [1] * 3 + [2] * 2 + [3] * 1 + [4] * 4
    for seed in range(20):
        chosen = eval_groups(group_of, 6, seed)
        taken = sum(group_of.count(g) for g in chosen)
        assert taken <= 6 and 6 - taken < max(Counter(group_of).values())
    assert eval_groups([0, 0, 0, 1, 1, 1], 2, seed=0) in ({0}, {1})  # none fits: the smallest, overshooting by 1


def test_a_prompt_is_its_text_with_its_images_and_text_only_prompts_are_their_text():
    turn = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Is it red?"}]}]
    shouted = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "IS  it red?"}]}]
    assert pair_keys(turn, [b"x"]) == pair_keys(shouted, [b"x"])  # case and spacing do not make another prompt
    assert pair_keys(turn, [b"x"])[1] != pair_keys(turn, [b"y"])[1]  # the same question about another image

    def text(question: str) -> list[str]:
        return pair_keys([{"role": "user", "content": question}], [])

    assert text("What is 2 + 2?") == text("what is  2 + 2?") != text("What is 2 + 3?") and len(text("x")) == 1
    assert pair_keys(turn, [b"x"])[0] == IMAGE + hashlib.sha256(b"x").hexdigest()


def test_no_pair_is_left_to_train_on_when_every_pair_is_one_group():
    with pytest.raises(ConfigError, match="all 3 pairs share images or prompts .* set DPO_EVAL_DATASET"):
        grouped_split([["image:a"], ["image:a", "prompt:x"], ["prompt:x"]], 1, seed=0)


# ---- through the data pipeline, on samples whose images repeat

def _image_keys(pairs) -> set[str]:
    """Each stored image's sha256, read from the prepared pairs (not from the split's own keys)."""
    stored = pairs.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return {hashlib.sha256(image["bytes"]).hexdigest() for images in stored["images"] for image in images}


def _prompts(pairs) -> set[tuple[str, tuple[str, ...]]]:
    """Each prompt as (its words, lower case; its images' sha256)."""
    stored = pairs.cast_column("images", datasets.List(datasets.Image(decode=False))) \
        if "images" in pairs.column_names else pairs
    out = set()
    for i, prompt in enumerate(stored["prompt"]):
        content = prompt[-1]["content"]
        text = content if isinstance(content, str) else " ".join(p["text"] for p in content if p["text"])
        images = tuple(hashlib.sha256(image["bytes"]).hexdigest() for image in stored[i].get("images") or [])
        out.add((" ".join(text.lower().split()), images))
    return out


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """sample:vqa-rad (4 questions a scan) and sample:rlaif-v with 3 pairs an image."""
    folder = tmp_path_factory.mktemp("repeated")
    return {"vqa-rad": "sample:vqa-rad", "rlaif-v": str(write_sample("rlaif-v", folder, rows=48, repeats=3))}


@pytest.mark.parametrize(("name", "fraction", "per_image"), [("vqa-rad", 0.25, 4), ("vqa-rad", 0.3, 4),
                                                             ("rlaif-v", 0.2, 3)])
def test_no_image_and_no_prompt_on_both_sides_and_the_share_met_within_one_group(repeated, tmp_path, name, fraction,
                                                                                 per_image):
    data = prepare(DataSpec(repeated[name], "train", eval_fraction=fraction, seed=7), tmp_path, RULES)
    train, held = data.train, data.eval
    assert not _image_keys(train) & _image_keys(held) and not _prompts(train) & _prompts(held)
    target = round(48 * fraction)
    split = data.report["split"]
    assert split["largest_group"] == per_image  # a scan's questions (an image's pairs) and nothing more
    assert abs(len(held) - target) < per_image and split["target_eval_pairs"] == target
    assert split["train"] == {"pairs": len(train), "groups": len(train) // per_image,
                              "images": len(_image_keys(train)), "prompts": len(_prompts(train))}
    assert split["eval"]["pairs"] == len(held) == data.report["eval_pairs"] and split["eval"]["images"] == \
        len(_image_keys(held)) == len(held) // per_image
    assert split["shared"] == {"images": 0, "prompts": 0}
    assert len(train) + len(held) == data.report["pairs"] == 48


def test_the_split_is_seeded_and_deterministic(repeated, tmp_path):
    def held_out(seed: int) -> list:
        return prepare(DataSpec(repeated["vqa-rad"], "train", eval_fraction=0.25, seed=seed), tmp_path,
                       RULES).eval["prompt"]

    assert held_out(3) == held_out(3) and held_out(3) != held_out(4)


def test_text_prompts_asked_twice_stay_on_one_side(tmp_path):
    """sample:text asks the same questions more than once ("What is the capital of France?")."""
    data = prepare(DataSpec("sample:text", "train", eval_fraction=0.25, seed=1), tmp_path, RowRules(max_images=0))
    asked = Counter(p[-1]["content"].lower() for p in [*data.train["prompt"], *data.eval["prompt"]])
    assert sum(n for n in asked.values() if n > 1) >= 6  # what makes a random split leak
    assert not _prompts(data.train) & _prompts(data.eval) and data.report["split"]["shared"]["prompts"] == 0
    assert data.report["split"]["largest_group"] > 1 and len(data.eval) > 0


def _png(colour: str, size=(30, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_training_pairs_that_share_an_image_or_a_prompt_with_the_eval_set_are_left_out_and_counted(tmp_path):
    rows = [{"image": {"bytes": _png(colour), "path": None}, "question": f"What colour is shape {i}?",
             "chosen": f"It is {colour}.", "rejected": "It is a dog."}
            for i, colour in enumerate(["red", "green", "blue", "navy", "olive", "teal", "gold", "pink"])]
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "chosen": datasets.Value("string"), "rejected": datasets.Value("string")})
    training = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(training)
    benchmark = tmp_path / "bench.parquet"  # row 1's image with another question; row 2's question and image
    datasets.Dataset.from_list([{**rows[1], "question": "Is it green?"}, rows[2]], features=features).to_parquet(
        benchmark)
    evaluation = prepare(DataSpec(str(benchmark), "train", setting="DPO_EVAL_DATASET", min_pairs=1), tmp_path, RULES)
    data = prepare(DataSpec(str(training), "train", held_out_keys=evaluation.keys), tmp_path, RULES)
    assert data.report["dropped"] == {IN_EVAL_SET: 2} and data.report["bad_rows"] == 0  # a leak avoided, not bad
    assert data.report["train_pairs"] == 6 and data.eval is None
    kept = {json.dumps(p[-1]["content"][-1]["text"]) for p in data.train["prompt"]}
    assert '"What colour is shape 1?"' not in kept and '"What colour is shape 2?"' not in kept
    assert not _image_keys(data.train) & _image_keys(evaluation.train)
