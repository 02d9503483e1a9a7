"""Image hygiene: every PIL mode to RGB correctly, EXIF rotation, broken files a counted reason, never a crash."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from entrypoint.data.images import JPEG_QUALITY, MIN_SIDE, CleanImage, ImageProblem, SizeLimit, load_image, to_rgb

NO_LIMIT = SizeLimit()


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def decoded(clean: CleanImage) -> Image.Image:
    """What training will see: the stored bytes, decoded as datasets decodes them."""
    image = Image.open(io.BytesIO(clean.stored["bytes"]))
    image.load()
    assert image.mode == "RGB" and image.size == clean.size
    return image


def problem(value, limit=NO_LIMIT, image_dir=None) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageProblem) as raised:
            load_image(value, limit, image_dir)
    assert not caught, [str(w.message) for w in caught]  # no flood of PIL warnings either
    return str(raised.value)


def two_tone(mode: str, first, second, size=(8, 4)) -> Image.Image:
    """Left half `first`, right half `second`, in `mode`."""
    image = Image.new(mode, size, first)
    image.paste(second, (size[0] // 2, 0, size[0], size[1]))
    return image


# mode, how it is stored, its left and right pixel values, and the RGB each must become
MODES = [
    ("1", "PNG", 0, 1, (0, 0, 0), (255, 255, 255)),
    ("L", "PNG", 30, 200, (30, 30, 30), (200, 200, 200)),
    ("LA", "PNG", (90, 0), (90, 255), (255, 255, 255), (90, 90, 90)),  # transparent -> white
    ("RGBA", "PNG", (255, 0, 0, 0), (0, 0, 255, 255), (255, 255, 255), (0, 0, 255)),
    ("CMYK", "JPEG", (0, 255, 255, 0), (0, 0, 0, 255), (255, 0, 0), (0, 0, 0)),
    ("CMYK", "TIFF", (0, 255, 255, 0), (255, 255, 0, 0), (255, 0, 0), (0, 0, 255)),
    # 12-bit scan in 16 bits: stretched from its darkest to its brightest value, not clipped to white
    ("I;16", "PNG", 100, 4000, (0, 0, 0), (255, 255, 255)),
    ("I", "TIFF", -5000, 70000, (0, 0, 0), (255, 255, 255)),
    ("F", "TIFF", 0.25, 0.75, (0, 0, 0), (255, 255, 255)),
]


@pytest.mark.parametrize(("mode", "fmt", "left", "right", "left_rgb", "right_rgb"), MODES,
                         ids=[f"{m[0]}-{m[1]}" for m in MODES])
def test_every_mode_becomes_the_right_rgb(mode, fmt, left, right, left_rgb, right_rgb):
    data = encoded(two_tone(mode, left, right), fmt)
    image = decoded(load_image(data, NO_LIMIT))
    tolerance = 6 if fmt == "JPEG" else 0
    assert np.allclose(image.getpixel((0, 0)), left_rgb, atol=tolerance), image.getpixel((0, 0))
    assert np.allclose(image.getpixel((7, 3)), right_rgb, atol=tolerance), image.getpixel((7, 3))


def test_a_16_bit_scan_keeps_its_grey_levels_in_between():
    ramp = Image.fromarray(np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8))
    assert ramp.mode == "I;16"
    values = np.asarray(decoded(load_image(encoded(ramp, "PNG"), NO_LIMIT)))[..., 0].ravel()
    assert values[0] == 0 and values[-1] == 255 and len(set(values.tolist())) == 64  # not 2 levels: black, white
    assert Image.new("I;16", (4, 4), 3000).convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # PIL's own: clipped


def test_a_palette_image_with_a_transparent_index_is_flattened_on_white():
    image = two_tone("P", 0, 1)
    image.putpalette([0, 128, 0, 200, 0, 0] + [0] * 762)
    data = encoded(image, "PNG", transparency=0)
    rgb = decoded(load_image(data, NO_LIMIT))
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((7, 3)) == (200, 0, 0)


def test_exif_orientation_is_applied():
    """A phone photo stored sideways with orientation 6: upright after loading, sides swapped."""
    stored = two_tone("RGB", (220, 0, 0), (0, 0, 220), size=(64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(stored, "JPEG", exif=exif, quality=95)
    clean = load_image(data, NO_LIMIT)
    assert clean.size == (32, 64)
    upright = np.asarray(decoded(clean), dtype=int)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"), dtype=int)
    assert np.abs(upright - expected).mean() < 3
    assert upright[2, 16, 0] > 150 and upright[-3, 16, 2] > 150  # red on top, blue at the bottom


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "unreadable image: empty file"),
    (b"this is not an image, it is text", "unreadable image: not an image"),
    (b"BM" + b"\x00" * 60, "unreadable image: corrupt"),  # a BMP header that makes no sense
    (None, "missing image"),
    ({"bytes": None, "path": None}, "missing image"),
    (12, "image is not an image, bytes or path (int)"),
])
def test_broken_values_are_a_reason_not_a_crash(value, reason):
    assert problem(value) == reason


def test_a_truncated_jpeg_and_png_are_caught_when_decoded_not_mid_run():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG"):
        data = encoded(photo, fmt)
        assert problem(data[: len(data) // 2]) == "unreadable image: truncated or corrupt"
        assert problem(data[: len(data) // 2], SizeLimit(longest=64)) == "unreadable image: truncated or corrupt"


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = encoded(Image.new("1", (10_000, 10_000)), "PNG")  # 100 Mpx, a few kB on disk
    assert len(bomb) < 50_000
    reason = problem(bomb)
    assert reason.startswith("unreadable image: decompression bomb (10000x10000 is over PIL's limit of 89,478,485")
    assert problem(encoded(Image.new("1", (14_000, 14_000)), "PNG")).startswith("unreadable image: decompression bomb")


@pytest.mark.parametrize(("size", "reason"), [((1, 1), "image too small"), ((1, 50), "image too small"),
                                              ((300, 10), "aspect ratio over 20:1")])
def test_images_no_processor_takes_are_a_reason(size, reason):
    assert reason in problem(encoded(Image.new("RGB", size), "PNG"))


def test_tiny_but_real_images_are_kept_at_their_size_for_the_processor_to_upscale():
    clean = load_image(encoded(Image.new("RGB", (MIN_SIDE, 3), "red"), "PNG"), SizeLimit(longest=1008))
    assert clean.size == (MIN_SIDE, 3)


def test_an_upright_small_rgb_jpeg_is_stored_as_it_came():
    data = encoded(Image.new("RGB", (120, 80), (10, 120, 30)), "JPEG", quality=80)
    clean = load_image({"bytes": data, "path": None}, SizeLimit(longest=1008))
    assert clean.stored["bytes"] == data and clean.size == (120, 80)


def test_large_images_shrink_exactly_to_the_limit_jpeg_stays_jpeg_png_stays_lossless():
    photo = two_tone("RGB", (200, 30, 30), (30, 30, 200), size=(4000, 3000))
    for fmt, expected_format in (("JPEG", "JPEG"), ("PNG", "PNG")):
        clean = load_image(encoded(photo, fmt), SizeLimit(longest=1008))
        image = decoded(clean)
        assert clean.size == (1008, 756) and image.format == expected_format
        assert np.allclose(image.getpixel((10, 10)), (200, 30, 30), atol=4)
    assert decoded(load_image(encoded(photo, "PNG"), SizeLimit(max_pixels=120_000))).size == (400, 300)
    assert JPEG_QUALITY >= 90


def test_an_already_decoded_image_is_cleaned_too():
    clean = load_image(Image.new("LA", (50, 40), (80, 255)), SizeLimit(longest=25))
    assert clean.size == (25, 20) and decoded(clean).getpixel((0, 0)) == (80, 80, 80)


def test_image_paths_resolve_against_the_image_folder(tmp_path):
    (tmp_path / "00001").mkdir()
    Image.new("RGB", (30, 20), "blue").save(tmp_path / "00001" / "a.jpg")
    assert load_image("00001/a.jpg", NO_LIMIT, tmp_path).size == (30, 20)
    assert load_image({"bytes": None, "path": str(tmp_path / "00001" / "a.jpg")}, NO_LIMIT).size == (30, 20)
    assert problem("00001/missing.jpg", image_dir=tmp_path) == "image file not found"
    assert "set DPO_IMAGE_DIR" in problem("00001/a.jpg")


def test_to_rgb_keeps_rgb_untouched():
    image = Image.new("RGB", (3, 3), "red")
    assert to_rgb(image) is image
