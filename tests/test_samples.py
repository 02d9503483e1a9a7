"""The generated samples: real schemas, decodable images, determinism, variety, caching."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import re

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from entrypoint.data import samples
from entrypoint.data.formats import IMAGE_MARKER, resolve_format
from entrypoint.data.images import SizeLimit
from entrypoint.data.prepare import DataSpec, RowRules, prepare
from entrypoint.data.samples import (
    DEFAULT_REPEATS,
    PHOTO_SIZES,
    POPE_CATEGORIES,
    POPE_OBJECTS,
    SAMPLE_VERSION,
    SAMPLES,
    write_sample,
)
from entrypoint.errors import ConfigError

S = datasets.Value("string")
# Copied from the dataset cards of openbmb/RLAIF-V-Dataset, flaviagiammarino/vqa-rad,
# openbmb/RLHF-V-Dataset and lmms-lab/POPE, not from the module, so a change to the module cannot
# silently drift from the real datasets. LLaVA's conversation JSON has no card: its columns are those
# datasets' json builder reads from liuhaotian/LLaVA-Pretrain's blip_laion_cc_sbu_558k.json.
RLAIF_V = datasets.Features({"ds_name": S, "image": datasets.Image(), "question": S, "chosen": S, "rejected": S,
                             "origin_dataset": S, "origin_split": S, "idx": S, "image_path": S})
REAL_FEATURES = {
    "rlaif-v": RLAIF_V,
    "rlaif-v-photos": RLAIF_V,
    "vqa-rad": datasets.Features({"image": datasets.Image(), "question": S, "answer": S}),
    "text": datasets.Features({"prompt": S, "chosen": S, "rejected": S}),
    "rlhf-v": datasets.Features({"ds_name": S, "image": datasets.Image(), "text": S, "origin_dataset": S,
                                 "origin_split": S, "idx": datasets.Value("int64"), "image_path": S}),
    "llava-conversations": datasets.Features({"id": S, "image": S,
                                              "conversations": datasets.List({"from": S, "value": S})}),
    "pope": datasets.Features({"id": S, "question_id": S, "question": S, "answer": S, "image_source": S,
                               "image": datasets.Image(), "category": S}),
}
EXPECTED_FORMAT = {"rlaif-v": "rlaif-v", "rlaif-v-photos": "rlaif-v", "vqa-rad": "vqa-rad", "text": "preference",
                   "rlhf-v": "rlhf-v", "llava-conversations": "llava-conversations", "pope": "pope"}
JSON_SAMPLES = ("llava-conversations",)  # a JSON file with image files beside it, in a directory of its own
# LLaVA's brief-caption instructions (its LCS-558K pretrain data), written out here.
LLAVA_BRIEF = {
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.", "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.", "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
}
# The documented sizes (width, height) of `rlaif-v-photos`, in order; written out here, not taken from
# the module, so that a changed list is a deliberate change.
DOCUMENTED_PHOTO_SIZES = [
    (640, 480), (800, 600), (1024, 768), (1280, 720), (1920, 1080), (2048, 1536), (3024, 4032), (4000, 3000),
    (4000, 1000), (3000, 600), (1080, 2400), (600, 3000), (336, 336), (300, 1200), (2000, 500), (50, 50),
]
# What the samples held when SAMPLE_VERSION was last bumped: decoded pixels and text, so PNG or parquet
# encoder changes do not count (JPEG is lossy: for `llava-conversations` the pixels are libjpeg's, so a
# libjpeg-turbo that encodes or decodes differently would change that digest). If this fails, the
# generator changed: bump SAMPLE_VERSION (so cached files are not reused) and update the digest.
CONTENT_DIGESTS = {
    "rlaif-v": "1acfb24c7c75cfcfbff38f28a947531b71e9f555ffcaed91c5a21f46d2fae06b",
    "vqa-rad": "ef50521f4d5743ba811fecf603aade8e610df00766f1239bb674411114315483",
    "text": "3663ba39615c839109dbf301d4d2517b1f54d08a014685f2b53ba7b60ca1d6fa",
    "rlhf-v": "bbbfe08538a57910727db553e2e54dfcd2b27063077198932221f914b6cefbe4",
    "llava-conversations": "70864ba3be92dfd490ef56ba632fc29775aec9e1bfdfa8382f676ddab311a319",
    "pope": "838486cb968f43407d04e31f00fba1e3bcb41f4f5f9b7868849bca9c8217e084",
}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="module")
def loaded(out_dir, tmp_path_factory):
    """Each sample written once and loaded back the way the job loads it (sources._load_local: the
    builder named by the file's suffix), with a cache of the test's own."""
    cache = tmp_path_factory.mktemp("hf-cache")
    result = {}
    for name in SAMPLES:
        path = write_sample(name, out_dir)
        builder = {".parquet": "parquet", ".json": "json"}[path.suffix]
        result[name] = (path, datasets.load_dataset(builder, data_files=str(path), split="train",
                                                    cache_dir=str(cache)))
    return result


def test_names_and_file_name(loaded, out_dir):
    assert SAMPLES == ("rlaif-v", "rlaif-v-photos", "vqa-rad", "text", "rlhf-v", "llava-conversations", "pope")
    for name, (path, _) in loaded.items():
        if name in JSON_SAMPLES:  # a directory of its own, holding the JSON and the image folders
            assert path == out_dir / f"{name}-48-0-v{SAMPLE_VERSION}" / "chat.json"
        else:
            assert path == out_dir / f"{name}-48-0-v{SAMPLE_VERSION}.parquet"
    for folder in (out_dir, *(loaded[name][0].parent for name in JSON_SAMPLES)):
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("name", SAMPLES)
def test_schema_is_the_real_one(loaded, name):
    path, rows = loaded[name]
    assert rows.features == REAL_FEATURES[name]
    assert list(rows.column_names) == list(REAL_FEATURES[name])
    if name in JSON_SAMPLES:  # JSON has no schema: every record has LLaVA's keys, in LLaVA's order
        records = json.loads(path.read_text())
        assert all(list(record) == list(REAL_FEATURES[name]) for record in records)
        assert all(list(turn) == ["from", "value"] for record in records for turn in record["conversations"])
    else:  # The Hub's `Image` feature is in the file's own metadata, not just inferred by the loader.
        assert datasets.Features.from_arrow_schema(pq.read_schema(path)) == REAL_FEATURES[name]
    assert len(rows) == 48


@pytest.mark.parametrize("name", SAMPLES)
def test_format_detected(loaded, name):
    fmt, _ = resolve_format("auto", loaded[name][1].column_names, "")
    assert fmt.name == EXPECTED_FORMAT[name]


def test_rlaif_v_images_vary_in_size_and_mode(loaded):
    images = loaded["rlaif-v"][1]["image"]
    assert all(isinstance(image, Image.Image) for image in images)
    assert {"RGB", "L", "RGBA", "P"} <= {image.mode for image in images}
    sizes = {image.size for image in images}
    assert len(sizes) > 20 and any(w != h for w, h in sizes)
    assert all(24 <= side <= 96 for size in sizes for side in size)


@pytest.mark.parametrize("name", ["rlaif-v", "rlaif-v-photos"])
def test_rlaif_v_pairs_differ(loaded, name):
    rows = loaded[name][1].remove_columns("image")
    assert all(row["chosen"] != row["rejected"] for row in rows)
    assert len(set(rows["question"])) >= 5 and len(set(rows["idx"])) == 48
    kinds = {json.loads(split)["type"] for split in rows["origin_split"]}
    assert kinds == {"color", "shape", "count", "describe", "exists"}


def test_photo_sizes_are_the_documented_list_cycled(loaded):
    assert list(PHOTO_SIZES) == DOCUMENTED_PHOTO_SIZES
    images = loaded["rlaif-v-photos"][1]["image"]
    cycle = len(DOCUMENTED_PHOTO_SIZES)
    assert [image.size for image in images] == [DOCUMENTED_PHOTO_SIZES[i % cycle] for i in range(48)]
    # The modes cycle by row index exactly as in `rlaif-v`.
    assert [image.mode for image in images] == [image.mode for image in loaded["rlaif-v"][1]["image"]]


def test_photo_shapes_stay_visible(loaded):
    """The shapes scale with the image: even one triangle on a panorama covers a few percent of it."""
    for image in loaded["rlaif-v-photos"][1]["image"][:len(DOCUMENTED_PHOTO_SIZES)]:
        pixels = np.asarray(image.convert("RGBA"))
        drawn = (pixels != pixels[0, 0]).any(axis=-1).mean()  # the corner is always background
        assert drawn > 0.03, (image.size, drawn)


def _content_digest(path) -> str:
    digest = hashlib.sha256()
    if path.suffix == ".json":  # each record, and its image file's decoded pixels and EXIF orientation
        for record in json.loads(path.read_text()):
            with Image.open(path.parent / record["image"]) as image:
                pixels = [image.mode, image.size, hashlib.sha256(image.tobytes()).hexdigest(),
                          image.getexif().get(ORIENTATION, 1)]
            digest.update(json.dumps([record, pixels]).encode())
        return digest.hexdigest()
    for row in pq.read_table(path).to_pylist():
        for key, value in row.items():
            if isinstance(value, dict):  # an image: its decoded pixels (and palette), not its PNG bytes
                with Image.open(io.BytesIO(value["bytes"])) as image:
                    value = [image.mode, image.size, hashlib.sha256(image.tobytes()).hexdigest(),
                             image.getpalette()]
            digest.update(json.dumps([key, value]).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("name", sorted(CONTENT_DIGESTS))
def test_content_is_pinned(tmp_path, name):
    assert _content_digest(write_sample(name, tmp_path, rows=24, seed=1)) == CONTENT_DIGESTS[name]


def _pixels(image: Image.Image) -> tuple:
    return image.mode, image.size, image.tobytes()


def test_vqa_rad_is_greyscale_half_closed_and_asks_several_questions_about_each_scan(loaded):
    rows = loaded["vqa-rad"][1]
    assert {image.mode for image in rows["image"]} == {"L"}
    repeats = DEFAULT_REPEATS["vqa-rad"]
    scans = [_pixels(image) for image in rows["image"]]
    assert repeats == 4 and all(len(set(scans[i:i + repeats])) == 1 for i in range(0, 48, repeats))
    assert len(set(scans)) == 48 // repeats and len({size for _, size, _ in scans}) > 8
    closed = sum(answer in ("yes", "no") for answer in rows["answer"])
    assert closed == 24 and {"yes", "no"} <= set(rows["answer"])
    assert len(set(rows["answer"]) - {"yes", "no"}) >= 3  # open answers to build wrong ones from


def test_repeated_rows_share_their_image_and_path_and_draw_their_own_questions(tmp_path):
    """RLAIF-V holds several pairs an image: `repeats` rows in a run share the image; repeats=1 is the plain sample."""
    rows = pq.read_table(write_sample("rlaif-v", tmp_path, rows=24, repeats=3)).to_pylist()
    plain = pq.read_table(write_sample("rlaif-v", tmp_path, rows=24)).to_pylist()
    assert write_sample("rlaif-v", tmp_path, rows=24, repeats=1).read_bytes() == \
        write_sample("rlaif-v", tmp_path, rows=24).read_bytes()
    images = [row["image"]["bytes"] for row in rows]
    assert all(len(set(images[i:i + 3])) == 1 for i in range(0, 24, 3)) and len(set(images)) == 8
    assert [row["image_path"] for row in rows[:6]] == ["synthetic/0/00000.png"] * 3 + ["synthetic/0/00003.png"] * 3
    assert images[0] not in {row["image"]["bytes"] for row in plain}  # from the run's own RNG, not a row's
    assert len({(row["question"], row["chosen"]) for row in rows}) > 12  # the questions are each row's own
    assert len({row["idx"] for row in rows}) == 24
    with pytest.raises(ConfigError, match="repeats must be >= 1, for the samples rlaif-v"):
        write_sample("text", tmp_path, repeats=2)


def _objects_in(rows: list[dict]) -> dict[str, set[str]]:
    """Each POPE image's objects, by its "yes" questions."""
    objects: dict[str, set[str]] = {}
    for row in rows:
        if row["answer"] == "yes":
            objects.setdefault(row["image_source"], set()).add(row["question"].split()[3])
    return objects


def test_pope_sample_asks_pope_questions_about_objects_that_are_and_are_not_in_each_image(loaded, tmp_path):
    rows = loaded["pope"][1]
    plain = rows.remove_columns("image").to_list()
    assert [row["question_id"] for row in plain] == [str(i + 1) for i in range(48)]
    assert all(re.fullmatch(r"Is there an? \w+ in the image\?", row["question"]) for row in plain)
    assert {row["answer"] for row in plain} == {"yes", "no"} and set(rows["category"]) == set(POPE_CATEGORIES)
    by_image: dict[str, list[dict]] = {}
    for row in plain:
        by_image.setdefault(row["image_source"], []).append(row)
    first = by_image[plain[0]["image_source"]]
    assert len(first) == 18 and len(set(_pixels(image) for image in rows["image"][:18])) == 1
    for category in POPE_CATEGORIES:  # 3 yes and 3 no a category, yes about the same 3 objects in each
        asked = [row for row in first if row["category"] == category]
        yes = {row["question"] for row in asked if row["answer"] == "yes"}
        no = {row["question"] for row in asked if row["answer"] == "no"}
        assert len(asked) == 6 and len(yes) == len(no) == 3 and not yes & no
        assert yes == {row["question"] for row in first if row["answer"] == "yes" and row["category"] == "random"}
    # Three objects drawn, one a cell, each in its own colour.
    image = np.asarray(rows["image"][0].convert("RGB"), dtype=np.int32)
    background = image[0, 0]
    for cell in np.array_split(image, 3, axis=1):
        drawn = cell[(np.abs(cell - background).sum(axis=-1) > 150)]
        assert len(drawn) > 0.05 * cell.shape[0] * cell.shape[1]
    colours = {tuple(np.median(c[(np.abs(c - background).sum(axis=-1) > 150)], axis=0))
               for c in np.array_split(image, 3, axis=1)}
    assert len(colours) == 3


def test_pope_negatives_are_random_popular_or_adversarial_as_pope_samples_them(tmp_path):
    """Over 40 images: `popular` asks about the absent objects the set shows most often, `adversarial` about those
    that most often come with the ones in the image, `random` about any absent object."""
    rows = pq.read_table(write_sample("pope", tmp_path, rows=18 * 40)).drop(["image"]).to_pylist()
    objects = _objects_in(rows)
    assert all(len(found) == 3 and found <= set(POPE_OBJECTS) for found in objects.values())
    frequency = {o: sum(o in found for found in objects.values()) for o in POPE_OBJECTS}
    together = {(a, b): sum({a, b} <= found for found in objects.values()) for a in POPE_OBJECTS for b in POPE_OBJECTS}
    popularity, cooccurrence = {}, {}
    for category in POPE_CATEGORIES:
        negatives = [(row["image_source"], row["question"].split()[3]) for row in rows
                     if row["category"] == category and row["answer"] == "no"]
        assert all(obj not in objects[image] for image, obj in negatives)  # never an object the image holds
        popularity[category] = np.mean([frequency[obj] for _, obj in negatives])
        cooccurrence[category] = np.mean([sum(together[obj, p] for p in objects[image]) for image, obj in negatives])
    assert popularity["popular"] > popularity["random"] and cooccurrence["adversarial"] > cooccurrence["random"]
    assert cooccurrence["adversarial"] > cooccurrence["popular"]


def test_text_pairs_are_learnable(loaded):
    rows = loaded["text"][1]
    assert all(row["chosen"] != row["rejected"] for row in rows)
    for row in rows:  # every chosen sum is right; the rejected one is wrong (or rude)
        if row["chosen"].startswith("Sure! "):
            expression, value = row["chosen"][len("Sure! "):-1].split(" = ")
            assert eval(expression) == int(value)
            assert row["rejected"] != row["chosen"][len("Sure! "):]


def _sample_bytes(path: pathlib.Path) -> dict[str, bytes]:
    """Every byte of a sample: its file, or for a JSON sample every file in its directory."""
    if path.suffix != ".json":
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in sorted(path.parent.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", SAMPLES)
def test_deterministic(tmp_path, name):
    first = _sample_bytes(write_sample(name, tmp_path / "a", rows=32, seed=3))
    assert _sample_bytes(write_sample(name, tmp_path / "b", rows=32, seed=3)) == first
    assert _sample_bytes(write_sample(name, tmp_path / "c", rows=32, seed=4)) != first


def test_longer_sample_extends_shorter(tmp_path):
    short = pq.read_table(write_sample("text", tmp_path, rows=32)).to_pylist()
    long = pq.read_table(write_sample("text", tmp_path, rows=40)).to_pylist()
    assert long[:32] == short and len(long) == 40


@pytest.mark.parametrize("name", ["vqa-rad", "llava-conversations"])
def test_cached_file_is_not_rewritten(tmp_path, name):
    path = write_sample(name, tmp_path, rows=32)
    before = path.stat().st_mtime_ns
    assert write_sample(name, tmp_path, rows=32) == path
    assert path.stat().st_mtime_ns == before


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown sample"):
        write_sample("nope", tmp_path)
    with pytest.raises(ConfigError, match="rows"):
        write_sample("text", tmp_path, rows=0)


# --- rlhf-v and llava-conversations --------------------------------------------------------------

ORIENTATION = 0x0112  # the EXIF tag


def test_rlhf_v_rows_are_rlaif_v_content_in_one_json_text(loaded):
    rows = loaded["rlhf-v"][1]
    texts = [json.loads(text) for text in rows["text"]]
    assert all(list(item) == ["question", "chosen", "rejected"] for item in texts)
    assert all(item["chosen"] != item["rejected"] for item in texts)
    assert set(rows["ds_name"]) == {"RLHF-V"} and rows["idx"] == list(range(48))
    assert {json.loads(split)["type"] for split in rows["origin_split"]} == {"color", "shape", "count", "describe",
                                                                             "exists"}
    # The same generator as rlaif-v (modes cycled by row index), drawn from its own RNG: other rows.
    rlaif_v = loaded["rlaif-v"][1]
    assert [image.mode for image in rows["image"]] == [image.mode for image in rlaif_v["image"]]
    assert [item["question"] for item in texts] != rlaif_v["question"]
    assert sum(a.tobytes() != b.tobytes() for a, b in zip(rows["image"], rlaif_v["image"], strict=True)) > 40


def _picture(image: Image.Image) -> tuple[str, str, int, bool | None]:
    """What an upright sample picture shows, read from its pixels: (background, colour, count, whether a
    triangle's apex is up, or None when the shapes are not triangles)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    background = min(samples._BACKGROUNDS, key=lambda b: np.abs(pixels[0, 0] - samples._BACKGROUNDS[b]).sum())
    distance = np.abs(pixels - samples._BACKGROUNDS[background]).sum(axis=-1)
    shape = distance > 150  # well inside a shape: JPEG blurs the edges
    color = min(samples._COLORS, key=lambda c: np.abs(np.median(pixels[shape], axis=0) - samples._COLORS[c]).sum())
    across = shape.any(axis=0) if image.width >= image.height else shape.any(axis=1)  # the shapes' row or column
    count = int(across[0]) + int(np.count_nonzero(across[1:] & ~across[:-1]))
    filled = shape.any(axis=1)
    start = int(np.argmax(filled))
    end = start + int(np.argmin(filled[start:])) if not filled[start:].all() else len(filled)
    drawn = shape[start:end]  # the rows of the first shape (of them all, when they are side by side)
    top, bottom = drawn[:len(drawn) // 2].sum(), drawn[-(len(drawn) // 2):].sum()
    apex_up = True if top < 0.8 * bottom else False if bottom < 0.8 * top else None  # squares, circles: even
    return background, color, count, apex_up


def test_llava_sample_is_llava_conversation_json(loaded):
    path = loaded["llava-conversations"][0]
    records = json.loads(path.read_text())
    assert isinstance(records, list) and len(records) == 48  # an array, not JSON lines
    placements, multi_turn, rotated = set(), [], []
    for i, record in enumerate(records):
        assert record["id"].isdigit() and len(record["id"]) == 9
        assert record["image"] == f"{record['id'][:5]}/{record['id']}.jpg"  # LLaVA's layout, relative
        turns = record["conversations"]
        assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) in (2, 4)
        first = turns[0]["value"]
        assert first.count(IMAGE_MARKER) == 1 and sum(IMAGE_MARKER in turn["value"] for turn in turns) == 1
        placements.add("before" if first.startswith(IMAGE_MARKER + "\n") else "after")
        assert first.replace(IMAGE_MARKER, "").strip() in LLAVA_BRIEF
        if len(turns) == 4:
            multi_turn.append(i)
        with Image.open(path.parent / record["image"]) as image:  # the path resolves beside the JSON
            assert image.format == "JPEG" and image.mode == "RGB"
            orientation = image.getexif().get(ORIENTATION, 1)
            upright = ImageOps.exif_transpose(image)
        if orientation != 1:
            assert orientation == 6 and upright.size == image.size[::-1]
            rotated.append(i)
        assert all(24 <= side <= 96 for side in upright.size)
        # The caption is true of the picture, read back from its pixels (upright, as the job sees it).
        count, color, shape, _, _, background, _ = turns[1]["value"].split()
        seen_background, seen_color, seen_count, apex_up = _picture(upright)
        assert (seen_background, seen_color, seen_count) == (background, color, samples._NUMBERS.index(count)), i
        assert apex_up is (True if shape.startswith("triangle") else None), i
        if len(turns) == 4:  # the follow-up is about the same picture, and true of it too
            assert turns[3]["value"] in (f"There {'is' if count == 'one' else 'are'} {count}.",
                                         f"The {shape} {'is' if count == 'one' else 'are'} {color}.")
    assert placements == {"before", "after"}
    assert multi_turn == list(range(3, 48, 4))
    assert rotated == list(range(5, 48, 8))
    # A rotated triangle comes out upright (apex up) only if the rotation is undone the right way round.
    assert any(records[i]["conversations"][1]["value"].split()[2].startswith("triangle") for i in rotated)


def test_longer_llava_sample_extends_shorter(tmp_path):
    short = json.loads(write_sample("llava-conversations", tmp_path, rows=8).read_text())
    long = json.loads(write_sample("llava-conversations", tmp_path, rows=12).read_text())
    assert long[:8] == short and len(long) == 12


def test_llava_sample_written_by_another_process_first_is_kept(tmp_path, monkeypatch):
    """Two ranks writing at once: the loser's rename fails on the winner's full directory, and it
    returns the winner's JSON, leaving no temporary directory."""
    records = samples._records
    calls = []

    def racing(name, rows, seed):
        if not calls:
            calls.append(name)
            winner = write_sample(name, tmp_path, rows=rows, seed=seed)  # finishes while this one builds
            calls.append(winner.stat().st_mtime_ns)
        return records(name, rows, seed)

    monkeypatch.setattr(samples, "_records", racing)
    path = write_sample("llava-conversations", tmp_path, rows=4)
    assert path == tmp_path / f"llava-conversations-4-0-v{SAMPLE_VERSION}" / "chat.json"
    assert path.stat().st_mtime_ns == calls[1]  # the winner's file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.parent.name]
    assert len(json.loads(path.read_text())) == 4


@pytest.mark.parametrize("name", ["rlhf-v", "llava-conversations"])
def test_new_samples_prepare_without_drops(tmp_path, name):
    """Through the job's own data path: detected, loaded (images beside the JSON found), every row a pair."""
    prepared = prepare(DataSpec(f"sample:{name}", "train", eval_fraction=0.1, max_eval_pairs=8), tmp_path,
                       RowRules(limit=SizeLimit(longest=64)))
    report = prepared.report
    assert report["format"] == name and report["format_detected"]
    assert report["dropped"] == {} and report["rows_read"] == 48 and report["pairs"] == 48
    pairs = prepared.train.to_list() + prepared.eval.to_list()
    assert len(pairs) == 48 and all(len(pair["images"]) == 1 for pair in pairs)
    if name == "llava-conversations":  # the multi-turn rows keep their earlier turns as the prompt
        assert sorted(len(pair["prompt"]) for pair in pairs) == [1] * 36 + [3] * 12
        for pair in pairs:  # the EXIF-rotated photos are stored upright, with no rotation left to apply
            with Image.open(io.BytesIO(pair["images"][0]["bytes"])) as image:
                assert image.getexif().get(ORIENTATION, 1) == 1
