"""The token budget at real sizes: pairs measured exactly as TRL's collator builds them, drops and cut answers
explained with the setting that fixes them, and a run that would lose too many pairs refused before loading."""

from __future__ import annotations

import copy
import logging

import pytest
from PIL import Image

from entrypoint.data.budget import PairLengths, spread, token_report
from entrypoint.data.formats import make_pair, message_text
from entrypoint.data.images import size_limit
from entrypoint.data.prepare import DataSpec, RowRules, TokenBudget, prepare
from entrypoint.data.samples import write_sample
from entrypoint.errors import ConfigError
from entrypoint.models.families import FAMILIES
from entrypoint.models.loading import processor_class
from entrypoint.models.shapes import build_shapes

VISION = ("llava-next", "llava", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3")


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {family: processor_class(FAMILIES[family]).from_pretrained(build_shapes(family, root / family))
            for family in (*VISION, "causal-lm")}


@pytest.mark.parametrize("family", VISION)
@pytest.mark.parametrize("size", [(640, 480), (300, 1200)])
def test_pair_lengths_equal_trls_collator_token_for_token(processors, family, size):
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    processor = processors[family]
    pair = make_pair("What color is the square?", "The square is red.", "It is a blue circle, I think.",
                     [Image.new("RGB", size, "red")])
    lengths = PairLengths(processor)(pair)
    batch = DataCollatorForVisionPreference(processor)([copy.deepcopy(pair)])
    chosen, rejected = batch["attention_mask"].sum(dim=1).tolist()
    prompt = lengths["prompt_tokens"]
    assert (prompt + lengths["chosen_tokens"], prompt + lengths["rejected_tokens"]) == (chosen, rejected)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (batch["input_ids"][0] == image_id).sum() <= lengths["image_tokens"][0]  # + Idefics2's boundary tokens
    for key in ("image_grid_thw", "mm_token_type_ids", "token_type_ids"):  # Qwen's grids and mrope types, Gemma's
        assert (key in batch) == (key in processor(text=processor.image_token, images=[Image.new("RGB", size)]))


def test_spread_is_nearest_rank():
    assert spread(list(range(1, 101))) == {"p50": 50, "p95": 95, "max": 100}
    assert spread([7]) == {"p50": 7, "p95": 7, "max": 7} and spread([])["max"] == 0


def test_report_counts_drops_and_cut_answers_and_the_length_that_keeps_them():
    measured = [{"prompt_tokens": p, "chosen_tokens": c, "rejected_tokens": r, "image_tokens": [p - 10]}
                for p, c, r in [(100, 5, 9), (1990, 20, 80), (2100, 10, 10), (500, 3, 4)]]
    report = token_report(measured, max_length=2048)
    assert report["dropped_prompt_too_long"] == 1 and report["answers_cut"] == 1  # 1990 + 80 > 2048 > 1990
    assert report["pair_tokens"]["max"] == 2110 and report["length_for_all"] == 2112  # a multiple of 64
    assert report["image_tokens_per_image"]["images"] == 4


def _prepare(path, processor, **budget):
    return prepare(DataSpec(str(path), "train", max_samples=16), path.parent,
                   RowRules(limit=size_limit(processor.image_processor)),
                   TokenBudget(PairLengths(processor), fewer_image_tokens="DPO_MAX_IMAGE_TILES=1", **budget))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_sample("rlaif-v-photos", tmp_path_factory.mktemp("photos"), rows=16)


def test_real_photos_measured_dropped_and_warned_with_the_fix(processors, photos, caplog):
    """LLaVA-NeXT at 2048 tokens: the photos whose anyres tokens reach it are dropped, and the warning says which
    length keeps them all; at that length nothing is dropped or cut."""
    processor = processors["llava-next"]
    with caplog.at_level(logging.WARNING, logger="entrypoint.data"):
        data = _prepare(photos, processor, max_length=2048, max_drop_fraction=1.0)
    tokens = data.report["tokens"]
    dropped = data.report["dropped"].get("prompt (with image tokens) reaches DPO_MAX_LENGTH", 0)
    assert dropped == tokens["dropped_prompt_too_long"] > 0 and data.report["pairs"] == 16 - dropped
    assert tokens["image_tokens_per_image"]["max"] == 2352 and tokens["pair_tokens"]["max"] > 2048
    warning = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warning and f"DPO_MAX_LENGTH={tokens['length_for_all']} keeps every pair" in warning[0]
    assert "DPO_MAX_IMAGE_TILES=1" in warning[0]
    fitted = _prepare(photos, processor, max_length=tokens["length_for_all"])
    assert fitted.report["pairs"] == 16 and fitted.report["tokens"]["answers_cut"] == 0


def test_too_many_drops_stop_the_run_naming_the_settings(processors, photos):
    with pytest.raises(ConfigError) as caught:
        _prepare(photos, processors["llava-next"], max_length=1500, max_drop_fraction=0.1)
    message = str(caught.value)
    assert "DPO_MAX_LENGTH=1500 drops" in message and "DPO_MAX_DROP_FRACTION=0.1" in message
    assert "Set DPO_MAX_LENGTH=2" in message and "DPO_MAX_IMAGE_TILES=1" in message


def test_text_pairs_are_measured_and_cut_answers_counted(processors, tmp_path):
    import datasets

    path = tmp_path / "text.jsonl"
    datasets.Dataset.from_dict({"prompt": ["short", "a much longer prompt " * 20, "ok"],
                                "chosen": ["a", "b", "the answer is long " * 10], "rejected": ["x", "y", "z"]}
                               ).to_json(path)
    tokenizer = processors["causal-lm"]
    data = prepare(DataSpec(str(path), "train"), tmp_path, RowRules(),
                   TokenBudget(PairLengths(tokenizer), max_length=30, max_drop_fraction=0.5))
    assert data.report["dropped"] == {"prompt (with image tokens) reaches DPO_MAX_LENGTH": 1}
    assert sorted(message_text(p) for p in data.train["prompt"]) == ["ok", "short"]
    assert data.report["tokens"]["answers_cut"] == 1
    with pytest.raises(ConfigError, match=r"DPO_BAD_ROWS=fail: row 1 of .*: prompt \(with image tokens\) reaches "
                                          "DPO_MAX_LENGTH"):
        prepare(DataSpec(str(path), "train"), tmp_path, RowRules(bad_rows="fail"),
                TokenBudget(PairLengths(tokenizer), max_length=30))


@pytest.mark.parametrize("family", VISION)
def test_a_set_with_impossible_images_is_prepared_with_each_counted_not_a_crash(processors, tmp_path, family):
    """2000x2 used to end an Idefics2 run (its splitting divided a 1-pixel side by two): now it, a 3x3000 strip
    and a 1x1 image are skipped with their reasons, and the rest is measured."""
    import io

    import datasets

    def png(size):
        buffer = io.BytesIO()
        Image.new("RGB", size, "green").save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    sizes = [(2000, 2), (3, 3000), (1, 1), (640, 480), (2000, 100), (50, 50)]
    rows = {"image": [png(s) for s in sizes], "question": [f"What is shown in image {i}?" for i in range(6)],
            "chosen": ["A green picture."] * 6, "rejected": ["A red dog."] * 6}
    path = tmp_path / "odd.parquet"
    datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"), "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string")})).to_parquet(str(path))
    processor = processors[family]
    data = prepare(DataSpec(str(path), "train"), tmp_path, RowRules(limit=size_limit(processor.image_processor)),
                   TokenBudget(PairLengths(processor), max_length=4096))
    assert data.report["dropped"] == {"image aspect ratio over 20:1": 2, "image too small (a side under 2 px)": 1}
    assert data.report["pairs"] == 3 and data.report["tokens"]["image_tokens_per_image"]["images"] == 3
