"""Image tokens at the published processor geometry: pinned counts, DPO_MAX_IMAGE_TILES in processor and model
alike, and images of any shape either measured and run or skipped with their reason, never a crash."""

from __future__ import annotations

import random

import pytest
import torch
import transformers
from PIL import Image

from entrypoint.data.images import MIN_SIDE, SizeLimit, clean_image, image_problem, size_limit
from entrypoint.models.families import FAMILIES
from entrypoint.models.image_tokens import ImageTokens, limit_tiles, model_overrides, tiles_per_image
from entrypoint.models.shapes import build_shapes

SIZES = [(336, 336), (640, 480), (1024, 768), (300, 1200), (2000, 500), (50, 50)]  # width x height

# Worked out by hand from each family's rule (the derivations are in the README's image-token table section).
# LLaVA-NeXT (llava-v1.6-mistral-7b: 336 px tiles of 24 x 24 patches, CLS dropped): the base image's 576, plus the
# best-fitting grid's patches with the padding rows or columns removed ("unpadded"), plus one newline per row.
#   336x336: grid 336x672 (least waste), 24 x 48 patches, width unpadded to 24: 24*24 + 24 + 576 = 1176
#   640x480, 1024x768: grid 672x672, 48 x 48, height unpadded to 36: 36*48 + 36 + 576 = 2340
#   300x1200: grid 1008x336 (3 rows), 72 x 24, width unpadded to 18: 72*18 + 72 + 576 = 1944
#   2000x500: grid 336x1008 (3 columns), 24 x 72, height unpadded to 18: 18*72 + 18 + 576 = 1890
#   50x50: every grid holds all of it, the smallest wins (336x672): as 336x336, 1176
# With DPO_MAX_IMAGE_TILES=1 the grid is one 336 px tile, 24 x 24 patches:
#   336x336, 50x50: 576 + 24 + 576 = 1176; 640x480, 1024x768: height 18: 18*24 + 18 + 576 = 1026
#   300x1200: width 6: 24*6 + 24 + 576 = 744; 2000x500: height 6: 6*24 + 6 + 576 = 726
# LLaVA 1.5: one 336 px crop, 24 x 24 patches: 576 whatever the size.
# Idefics2 (idefics2-8b: image_seq_len 64, do_image_splitting): 4 crops and the whole image, 64 tokens each, each
# run of 64 between boundary tokens, shared between neighbours: 5*64 + 6 = 326; without splitting 64 + 2 = 66.
EXPECTED = {
    ("llava-next", None): [1176, 2340, 2340, 1944, 1890, 1176],
    ("llava-next", 1): [1176, 1026, 1026, 744, 726, 1176],
    ("llava", None): [576] * 6,
    ("llava", 1): [576] * 6,
    ("idefics2", None): [326] * 6,
    ("idefics2", 1): [66] * 6,
}
VISION = ("llava-next", "llava", "idefics2")


@pytest.fixture(scope="module")
def shapes_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {family: build_shapes(family, root / family) for family in VISION}


def _processor(path, family, max_tiles=None):
    processor = transformers.AutoProcessor.from_pretrained(path)
    limit_tiles(FAMILIES[family], processor, max_tiles)
    return processor


@pytest.mark.parametrize(("family", "max_tiles"), list(EXPECTED))
def test_tokens_an_image_are_the_hand_worked_counts(shapes_dirs, family, max_tiles):
    processor = _processor(shapes_dirs[family], family, max_tiles)
    count = ImageTokens(processor)
    assert [count(size) for size in SIZES] == EXPECTED[family, max_tiles]
    # the job shrinks images before the processor sees them: the count must not change
    limit = size_limit(processor.image_processor)
    assert [count(clean_image(Image.new("RGB", size), limit).size) for size in SIZES] == EXPECTED[family, max_tiles]


@pytest.mark.parametrize(("family", "max_tiles"), list(EXPECTED))
def test_the_fast_counts_equal_the_processors_own_expansion_on_every_shape(shapes_dirs, family, max_tiles):
    """The job counts with transformers' formula (checked first on PROBE_SIZES) or once for families whose
    count never depends on the size; here both against the processor on 40 sizes the probe never saw."""
    processor = _processor(shapes_dirs[family], family, max_tiles)
    fast = ImageTokens(processor, FAMILIES[family].image_tokens_fixed)
    rng = random.Random(f"{family}{max_tiles}")
    sizes = [(rng.randint(2, 4000), rng.randint(2, 4000)) for _ in range(40)]
    sizes = [s for s in sizes if max(s) <= 20 * min(s)]  # the shapes the job passes on (images.MAX_ASPECT_RATIO)
    assert [fast(size) for size in sizes] == [fast.measured(size) for size in sizes]
    assert fast.same_for_every_size or fast._formula is not None  # the fast path is really taken


def _prompt(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("max_tiles", [None, 1, 2])
def test_llava_next_model_follows_the_processors_grid_at_every_size(shapes_dirs, max_tiles):
    path = shapes_dirs["llava-next"]
    processor = _processor(path, "llava-next", max_tiles)
    model = transformers.LlavaNextForConditionalGeneration.from_pretrained(
        path, **model_overrides(FAMILIES["llava-next"], processor)).eval()
    for size in SIZES:
        inputs = processor(text=_prompt(processor), images=[Image.new("RGB", size, "red")], return_tensors="pt")
        with torch.no_grad():
            assert torch.isfinite(model(**inputs).logits).all(), size


def test_a_grid_changed_in_the_processor_alone_fails_which_is_why_the_model_follows_it(shapes_dirs):
    path = shapes_dirs["llava-next"]
    processor = _processor(path, "llava-next", 1)
    unchanged = transformers.LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    inputs = processor(text=_prompt(processor), images=[Image.new("RGB", (640, 480))], return_tensors="pt")
    with pytest.raises(RuntimeError, match="split_with_sizes expects split_sizes to sum exactly"):
        with torch.no_grad():
            unchanged(**inputs)


def test_tiles_setting_per_family(shapes_dirs):
    assert [tiles_per_image(FAMILIES[f], _processor(shapes_dirs[f], f)) for f in VISION] == [5, 1, 5]
    assert [tiles_per_image(FAMILIES[f], _processor(shapes_dirs[f], f, 1)) for f in VISION] == [2, 1, 1]
    three = _processor(shapes_dirs["llava-next"], "llava-next", 3)
    assert three.image_processor.image_grid_pinpoints == [[336, 672], [672, 336], [1008, 336], [336, 1008]]
    assert _processor(shapes_dirs["idefics2"], "idefics2", 4).image_processor.do_image_splitting is True


@pytest.mark.parametrize(("size", "reason"), [((2000, 2), "aspect ratio"), ((3, 3000), "aspect ratio"),
                                               ((1, 1), "too small"), ((5, 1), "too small")])
def test_impossible_images_are_skipped_with_their_reason(size, reason):
    assert reason in image_problem(Image.new("RGB", size))


@pytest.mark.parametrize("family", VISION)
def test_extreme_but_allowed_shapes_run_through_processor_and_model(shapes_dirs, family):
    """The widest and tallest allowed (20:1), the smallest (2x2), and each shrunk to the processor's size or to a
    pixel cap: both sides stay >= MIN_SIDE after every resize, and the model takes the result."""
    path = shapes_dirs[family]
    processor = _processor(path, family)
    model = getattr(transformers, FAMILIES[family].model_class).from_pretrained(path).eval()
    for size in [(2000, 100), (100, 2000), (2, 2), (4000, 3000)]:
        assert image_problem(Image.new("RGB", size)) == ""
        for limit in (size_limit(processor.image_processor), size_limit(processor.image_processor, 1024)):
            image = clean_image(Image.new("RGB", size, "blue"), limit)
            assert min(image.size) >= MIN_SIDE and (not limit.max_pixels or image.width * image.height <= 1024)
            inputs = processor(text=_prompt(processor), images=[image], return_tensors="pt")
            with torch.no_grad():
                assert torch.isfinite(model(**inputs).logits).all(), (size, image.size)


def test_pixel_cap_shrinks_keeping_aspect_and_never_enlarges():
    assert clean_image(Image.new("RGB", (4000, 3000)), SizeLimit(max_pixels=120_000)).size == (400, 300)
    assert clean_image(Image.new("RGB", (300, 200)), SizeLimit(max_pixels=120_000)).size == (300, 200)
    capped = clean_image(Image.new("RGB", (1001, 999)), SizeLimit(longest=1008, max_pixels=10_000))
    assert capped.width * capped.height <= 10_000 and abs(capped.width / capped.height - 1001 / 999) < 0.02


@pytest.mark.parametrize(("family", "max_tiles"), [("llava", None), ("idefics2", None), ("idefics2", 1)])
def test_a_training_step_runs_on_every_size(shapes_dirs, family, max_tiles):
    """Forward and backward at each pinned size, for the families whose grid has nothing to follow (LLaVA-NeXT's
    is above): no feature/token mismatch, finite gradients."""
    path = shapes_dirs[family]
    processor = _processor(path, family, max_tiles)
    model = getattr(transformers, FAMILIES[family].model_class).from_pretrained(path).train()
    for size in SIZES:
        inputs = processor(text=_prompt(processor) + " A red square.", images=[Image.new("RGB", size, "red")],
                           return_tensors="pt")
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), size
