"""Image tokens at the published processor geometry: pinned counts, DPO_MAX_IMAGE_TILES in processor and model
alike, DPO_IMAGE_MAX_PIXELS as Qwen's max_pixels, Gemma 3's pan-and-scan, and images of any shape either measured
and run or skipped with their reason, never a crash."""

from __future__ import annotations

import random

import pytest
import torch
import transformers
from PIL import Image

from entrypoint.data.images import MIN_SIDE, SizeLimit, clean_image, size_limit, size_problem
from entrypoint.errors import ConfigError
from entrypoint.models.families import FAMILIES
from entrypoint.models.image_tokens import (
    ImageTokens,
    fewer_tokens_hint,
    limit_pixels,
    limit_tiles,
    model_overrides,
    same_for_every_size,
    tiles_per_image,
)
from entrypoint.models.loading import processor_class
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
# Gemma 3 (gemma-3-4b-it: mm_tokens_per_image 256, pan-and-scan off): the processor writes "\n\n", start of image,
# 256 image tokens, end of image, "\n\n" (each "\n\n" one token): 260 whatever the size.
EXPECTED = {
    ("llava-next", None): [1176, 2340, 2340, 1944, 1890, 1176],
    ("llava-next", 1): [1176, 1026, 1026, 744, 726, 1176],
    ("llava", None): [576] * 6,
    ("llava", 1): [576] * 6,
    ("idefics2", None): [326] * 6,
    ("idefics2", 1): [66] * 6,
    ("gemma3", None): [260] * 6,
    ("gemma3", 1): [260] * 6,
}
# Qwen (no tiles; keyed by DPO_IMAGE_MAX_PIXELS). The processor rounds each side to a multiple of 28 px (patch 14 x
# merge 2; Qwen3-VL 32 px: 16 x 2), keeps the pixel count within [min_pixels, max_pixels], one token per square.
# Qwen2.5-VL-7B (min 3,136, max 12,845,056: no image here is capped):
#   336x336: 12 x 12 = 144; 640x480: rows 480/28 = 17.1 -> 17, columns 640/28 = 22.9 -> 23: 391;
#   1024x768: 27 x 37 = 999; 300x1200: 43 x 11 = 473; 2000x500: 18 x 71 = 1278; 50x50: 2 x 2 = 4 (56x56 = min).
# Qwen3-VL-8B (min 65,536, max 16,777,216): 336x336: 10.5 -> 10 (round half to even): 100; 640x480: 15 x 20 = 300;
#   1024x768: 24 x 32 = 768; 300x1200: 37.5 -> 38 x 9.4 -> 9 = 342; 2000x500: 15.6 -> 16 x 62.5 -> 62 = 992;
#   50x50: 2 x 2 x 32^2 = 4,096 px is under min_pixels, scaled up by sqrt(65536 / 2500) = 5.12 to 256x256: 64.
# With DPO_IMAGE_MAX_PIXELS the job first shrinks each image to that many pixels (data/images.py), then the processor
# rounds: at 200,704 (= 256 x 28^2) 640x480 and 1024x768 become 517x388 -> 14 x 18 = 252, 300x1200 224x896 -> 32 x 8
# = 256, 2000x500 896x224 -> 256; at 262,144 (= 256 x 32^2) 591x443 -> 14 x 18 = 252, 256x1024 -> 8 x 32 = 256.
EXPECTED_PIXELS = {
    ("qwen2.5-vl", None): [144, 391, 999, 473, 1278, 4],
    ("qwen2.5-vl", 200704): [144, 252, 252, 256, 256, 4],
    ("qwen3-vl", None): [100, 300, 768, 342, 992, 64],
    ("qwen3-vl", 262144): [100, 252, 252, 256, 256, 64],
}
VISION = ("llava-next", "llava", "idefics2")  # the tiling families: DPO_MAX_IMAGE_TILES cuts their tiles
NEWER = ("qwen2.5-vl", "qwen3-vl", "gemma3")
ALL_VISION = VISION + NEWER


@pytest.fixture(scope="module")
def shapes_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {family: build_shapes(family, root / family) for family in ALL_VISION}


def _processor(path, family, max_tiles=None, max_pixels=None):
    processor = processor_class(FAMILIES[family]).from_pretrained(path)
    limit_tiles(FAMILIES[family], processor, max_tiles)
    limit_pixels(FAMILIES[family], processor, max_pixels)
    return processor


@pytest.mark.parametrize(("family", "max_tiles"), list(EXPECTED))
def test_tokens_an_image_are_the_hand_worked_counts(shapes_dirs, family, max_tiles):
    processor = _processor(shapes_dirs[family], family, max_tiles)
    count = ImageTokens(processor)
    assert [count(size) for size in SIZES] == EXPECTED[family, max_tiles]
    # the job shrinks images before the processor sees them: the count must not change
    limit = size_limit(processor.image_processor)
    assert [count(clean_image(Image.new("RGB", size), limit).size) for size in SIZES] == EXPECTED[family, max_tiles]


@pytest.mark.parametrize(("family", "max_pixels"), list(EXPECTED_PIXELS))
def test_qwen_tokens_an_image_are_the_hand_worked_counts_after_the_jobs_own_shrinking(shapes_dirs, family, max_pixels):
    """DPO_IMAGE_MAX_PIXELS is the processor's max_pixels and the data cleaning's limit alike: the counts are those of
    the images as the job stores them; without it the job changes no size here and the counts are the processor's."""
    processor = _processor(shapes_dirs[family], family, max_pixels=max_pixels)
    assert processor.image_processor.size["longest_edge"] == (max_pixels or
                                                               {"qwen2.5-vl": 12845056, "qwen3-vl": 16777216}[family])
    count, limit = ImageTokens(processor), size_limit(processor.image_processor, max_pixels)
    assert limit == SizeLimit(max_pixels=processor.image_processor.size["longest_edge"])  # counts, not sides
    assert [count(clean_image(Image.new("RGB", size), limit).size) for size in SIZES] == EXPECTED_PIXELS[family,
                                                                                                         max_pixels]
    if max_pixels is None:
        assert [count(size) for size in SIZES] == EXPECTED_PIXELS[family, max_pixels]


FAST = [*EXPECTED, *[(family, None, pixels) for family, pixels in EXPECTED_PIXELS], ("gemma3", 2)]


@pytest.mark.parametrize("case", FAST, ids=lambda case: "-".join(map(str, case)))
def test_the_fast_counts_equal_the_processors_own_expansion_on_every_shape(shapes_dirs, case):
    """The job counts with transformers' formula (checked first on PROBE_SIZES) or once for families whose
    count never depends on the size; here both against the processor on 40 sizes the probe never saw (12 where
    measuring is slow). Gemma 3's formula leaves out the line breaks and the start and end tokens around each image,
    and its pan-and-scan crops, so the job measures it: once with pan-and-scan off (every image the same), once per
    size with it on."""
    family, max_tiles, max_pixels = (*case, None)[:3]
    processor = _processor(shapes_dirs[family], family, max_tiles, max_pixels)
    fast = ImageTokens(processor, same_for_every_size(FAMILIES[family], processor))
    rng = random.Random(f"{family}{max_tiles}{max_pixels}")
    # fewer where measuring is slow: Gemma 3 resizes every crop to 896 px, Qwen uncapped patchifies up to 12 megapixels
    slow = family == "gemma3" or (FAMILIES[family].tiling == "dynamic" and not max_pixels)
    sizes = [(rng.randint(2, 4000), rng.randint(2, 4000)) for _ in range(12 if slow else 40)]
    sizes = [s for s in sizes if max(s) <= 20 * min(s)]  # the shapes the job passes on (images.MAX_ASPECT_RATIO)
    assert [fast(size) for size in sizes] == [fast.measured(size) for size in sizes]
    if (family, max_tiles) != ("gemma3", 2):
        assert fast.same_for_every_size or fast._formula is not None  # the fast path is really taken


def test_gemma3_pan_and_scan_is_off_unless_asked_and_adds_at_most_the_tiles_asked(shapes_dirs):
    """Off as gemma-3-4b-it ships (and with DPO_MAX_IMAGE_TILES=1); DPO_MAX_IMAGE_TILES=n turns it on with at most n
    crops beside the whole image, only for images at least 1.2 times wider than tall or taller than wide."""
    path, family = shapes_dirs["gemma3"], FAMILIES["gemma3"]

    def image_tokens(processor, size):
        ids = processor(text=processor.image_token, images=[Image.new("RGB", size)])["input_ids"][0]
        return ids.count(processor.tokenizer.image_token_id)

    for tiles in (None, 1):
        processor = _processor(path, "gemma3", tiles)
        assert [image_tokens(processor, size) for size in SIZES] == [256] * 6
        assert tiles_per_image(family, processor) == 1
        assert same_for_every_size(family, processor) and fewer_tokens_hint(family, processor) is None
    two, four = _processor(path, "gemma3", 2), _processor(path, "gemma3", 4)
    # 336x336 and 50x50 are square; 640x480 (1.33) gets 2 crops; 2000x500 (4:1) 4 crops when 4 are allowed
    assert [image_tokens(two, size) for size in SIZES] == [256, 768, 768, 768, 768, 256]
    assert [image_tokens(four, size) for size in ((640, 480), (2000, 500))] == [512 + 256, 4 * 256 + 256]
    assert (tiles_per_image(family, two), tiles_per_image(family, four)) == (3, 5)
    assert not same_for_every_size(family, two) and fewer_tokens_hint(family, two) == "DPO_MAX_IMAGE_TILES=1 " \
                                                                                       "(pan-and-scan off)"
    # the job keeps the pixels the crops need: the long side up to 896 a crop
    assert size_limit(four.image_processor) == SizeLimit(longest=4 * 896)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_refuses_tiles_and_a_pixel_budget_under_its_minimum_naming_its_setting(shapes_dirs, family):
    with pytest.raises(ConfigError, match=r"DPO_MAX_IMAGE_TILES=1: .* cuts no image into tiles.*set "
                                          r"DPO_IMAGE_MAX_PIXELS instead, e.g. DPO_IMAGE_MAX_PIXELS=\d+"):
        _processor(shapes_dirs[family], family, max_tiles=1)
    with pytest.raises(ConfigError, match=r"DPO_IMAGE_MAX_PIXELS=2000 is below .*'s min_pixels"):
        _processor(shapes_dirs[family], family, max_pixels=2000)
    # the setting only lowers the checkpoint's: above it, the published max_pixels stays
    published = _processor(shapes_dirs[family], family).image_processor.size["longest_edge"]
    assert _processor(shapes_dirs[family], family, max_pixels=10**9).image_processor.size["longest_edge"] == published
    hint = fewer_tokens_hint(FAMILIES[family], _processor(shapes_dirs[family], family))
    side = {"qwen2.5-vl": 28, "qwen3-vl": 32}[family]
    assert hint == (f"DPO_IMAGE_MAX_PIXELS={1024 * side * side} (at most 1,024 tokens an image; now {published:,} "
                    f"pixels, up to 16,384 tokens)")
    small = _processor(shapes_dirs[family], family, max_pixels=256 * side * side)
    assert fewer_tokens_hint(FAMILIES[family], small) == (f"a lower DPO_IMAGE_MAX_PIXELS (now {256 * side * side:,} "
                                                           f"pixels, up to 256 tokens an image)")


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
    assert reason in size_problem(*size)


@pytest.mark.parametrize("family", ALL_VISION)
def test_extreme_but_allowed_shapes_run_through_processor_and_model(shapes_dirs, family):
    """The widest and tallest allowed (20:1), the smallest (2x2), and each shrunk to the processor's size or to a
    pixel cap: both sides stay >= MIN_SIDE after every resize, and the model takes the result."""
    path = shapes_dirs[family]
    processor = _processor(path, family)
    model = getattr(transformers, FAMILIES[family].model_class).from_pretrained(path).eval()
    for size in [(2000, 100), (100, 2000), (2, 2), (4000, 3000)]:
        assert size_problem(*size) == ""
        for limit in (size_limit(processor.image_processor), size_limit(processor.image_processor, 1024)):
            image = clean_image(Image.new("RGB", size, "blue"), limit)
            assert min(image.size) >= MIN_SIDE
            assert not limit.max_pixels or image.width * image.height <= limit.max_pixels
            inputs = processor(text=_prompt(processor), images=[image], return_tensors="pt")
            with torch.no_grad():
                assert torch.isfinite(model(**inputs).logits).all(), (size, image.size)


def test_pixel_cap_shrinks_keeping_aspect_and_never_enlarges():
    assert clean_image(Image.new("RGB", (4000, 3000)), SizeLimit(max_pixels=120_000)).size == (400, 300)
    assert clean_image(Image.new("RGB", (300, 200)), SizeLimit(max_pixels=120_000)).size == (300, 200)
    capped = clean_image(Image.new("RGB", (1001, 999)), SizeLimit(longest=1008, max_pixels=10_000))
    assert capped.width * capped.height <= 10_000 and abs(capped.width / capped.height - 1001 / 999) < 0.02


@pytest.mark.parametrize(("family", "max_tiles", "max_pixels"), [
    ("llava", None, None), ("idefics2", None, None), ("idefics2", 1, None),
    # Qwen's model reads each image's grid from the processor (image_grid_thw): a lowered max_pixels needs nothing
    ("qwen2.5-vl", None, None), ("qwen2.5-vl", None, 200704), ("qwen3-vl", None, None), ("qwen3-vl", None, 262144),
    ("gemma3", None, None), ("gemma3", 2, None),  # pan-and-scan: 256 more tokens, one more tower image, a crop
])
def test_a_training_step_runs_on_every_size(shapes_dirs, family, max_tiles, max_pixels):
    """Forward and backward at each pinned size, for the families whose grid has nothing to follow (LLaVA-NeXT's
    is above): no feature/token mismatch, finite gradients."""
    path = shapes_dirs[family]
    processor = _processor(path, family, max_tiles, max_pixels)
    model = getattr(transformers, FAMILIES[family].model_class).from_pretrained(path).train()
    for size in SIZES:
        inputs = processor(text=_prompt(processor) + " A red square.", images=[Image.new("RGB", size, "red")],
                           return_tensors="pt")
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), size
