"""The generated samples: real schemas, decodable images, determinism, variety, caching."""

from __future__ import annotations

import hashlib
import io
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from entrypoint.data.formats import resolve_format
from entrypoint.data.samples import PHOTO_SIZES, SAMPLE_VERSION, SAMPLES, write_sample
from entrypoint.errors import ConfigError

S = datasets.Value("string")
# Copied from the dataset cards of openbmb/RLAIF-V-Dataset and flaviagiammarino/vqa-rad, not from
# the module, so a change to the module cannot silently drift from the real datasets.
RLAIF_V = datasets.Features({"ds_name": S, "image": datasets.Image(), "question": S, "chosen": S, "rejected": S,
                             "origin_dataset": S, "origin_split": S, "idx": S, "image_path": S})
REAL_FEATURES = {
    "rlaif-v": RLAIF_V,
    "rlaif-v-photos": RLAIF_V,
    "vqa-rad": datasets.Features({"image": datasets.Image(), "question": S, "answer": S}),
    "text": datasets.Features({"prompt": S, "chosen": S, "rejected": S}),
}
EXPECTED_FORMAT = {"rlaif-v": "rlaif-v", "rlaif-v-photos": "rlaif-v", "vqa-rad": "vqa-rad", "text": "preference"}
# The documented sizes (width, height) of `rlaif-v-photos`, in order; written out here, not taken from
# the module, so that a changed list is a deliberate change.
DOCUMENTED_PHOTO_SIZES = [
    (640, 480), (800, 600), (1024, 768), (1280, 720), (1920, 1080), (2048, 1536), (3024, 4032), (4000, 3000),
    (4000, 1000), (3000, 600), (1080, 2400), (600, 3000), (336, 336), (300, 1200), (2000, 500), (50, 50),
]
# What the samples held when SAMPLE_VERSION was last bumped: decoded pixels and text, so PNG or parquet
# encoder changes do not count. If this fails, the generator changed: bump SAMPLE_VERSION (so cached
# files are not reused) and update the digest.
CONTENT_DIGESTS = {
    "rlaif-v": "1acfb24c7c75cfcfbff38f28a947531b71e9f555ffcaed91c5a21f46d2fae06b",
    "vqa-rad": "3c93a093ae37da5c0398a08b72f1eed81ce3348edcafc261dcd2d98d15cb4ce7",
    "text": "3663ba39615c839109dbf301d4d2517b1f54d08a014685f2b53ba7b60ca1d6fa",
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Each sample written once and loaded back the way the job loads it."""
    out = tmp_path_factory.mktemp("samples")
    cache = tmp_path_factory.mktemp("hf-cache")
    result = {}
    for name in SAMPLES:
        path = write_sample(name, out)
        result[name] = (path, datasets.load_dataset("parquet", data_files=str(path), split="train",
                                                    cache_dir=str(cache)))
    return result


def test_names_and_file_name(loaded):
    assert SAMPLES == ("rlaif-v", "rlaif-v-photos", "vqa-rad", "text")
    for name, (path, _) in loaded.items():
        assert path.name == f"{name}-48-0-v{SAMPLE_VERSION}.parquet"
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("name", SAMPLES)
def test_schema_is_the_real_one(loaded, name):
    path, rows = loaded[name]
    assert rows.features == REAL_FEATURES[name]
    assert list(rows.column_names) == list(REAL_FEATURES[name])
    # The Hub's `Image` feature is in the file's own metadata, not just inferred by the loader.
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


def test_vqa_rad_is_greyscale_and_half_closed(loaded):
    rows = loaded["vqa-rad"][1]
    assert {image.mode for image in rows["image"]} == {"L"}
    assert len({image.size for image in rows["image"]}) > 20
    closed = sum(answer in ("yes", "no") for answer in rows["answer"])
    assert closed == 24 and {"yes", "no"} <= set(rows["answer"])
    assert len(set(rows["answer"]) - {"yes", "no"}) >= 3  # open answers to build wrong ones from


def test_text_pairs_are_learnable(loaded):
    rows = loaded["text"][1]
    assert all(row["chosen"] != row["rejected"] for row in rows)
    for row in rows:  # every chosen sum is right; the rejected one is wrong (or rude)
        if row["chosen"].startswith("Sure! "):
            expression, value = row["chosen"][len("Sure! "):-1].split(" = ")
            assert eval(expression) == int(value)
            assert row["rejected"] != row["chosen"][len("Sure! "):]


@pytest.mark.parametrize("name", SAMPLES)
def test_deterministic(tmp_path, name):
    first = write_sample(name, tmp_path / "a", rows=32, seed=3).read_bytes()
    assert write_sample(name, tmp_path / "b", rows=32, seed=3).read_bytes() == first
    assert write_sample(name, tmp_path / "c", rows=32, seed=4).read_bytes() != first


def test_longer_sample_extends_shorter(tmp_path):
    short = pq.read_table(write_sample("text", tmp_path, rows=32)).to_pylist()
    long = pq.read_table(write_sample("text", tmp_path, rows=40)).to_pylist()
    assert long[:32] == short and len(long) == 40


def test_cached_file_is_not_rewritten(tmp_path):
    path = write_sample("vqa-rad", tmp_path, rows=32)
    before = path.stat().st_mtime_ns
    assert write_sample("vqa-rad", tmp_path, rows=32) == path
    assert path.stat().st_mtime_ns == before


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown sample"):
        write_sample("nope", tmp_path)
    with pytest.raises(ConfigError, match="rows"):
        write_sample("text", tmp_path, rows=0)
