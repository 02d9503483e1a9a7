"""Image hygiene: every image decoded safely, upright, RGB, no bigger than the processor will use.

Real datasets hold greyscale, palette, CMYK, 16-bit and transparent images, photos of several
megapixels with an EXIF rotation, and now and then a file that is empty, cut short, not an image at
all, or a "decompression bomb" (a small file that claims billions of pixels). `load_image` turns any
of them into either a clean image or an `ImageProblem` whose text is the reason the row is skipped:
never a crash, a hang or a flood of warnings.

What a clean image is:
- decoded from its bytes here (datasets' own decoding is turned off), inside a `warnings` guard;
  a file over PIL's pixel limit (`Image.MAX_IMAGE_PIXELS`) is refused from its header, before any
  pixel is decoded; the whole file is decoded once, so a truncated one is caught now, not mid-run;
- upright: the EXIF orientation is applied, as cameras and phones expect;
- RGB: transparency is flattened on white; 16-bit, 32-bit and float images (I;16, I, F: scans,
  medical images) are stretched from their own darkest to their brightest value, a viewer's default
  window, rather than clipped to white; CMYK and the rest through PIL's own conversion;
- no bigger than the processor uses (`size_limit`) and DPO_IMAGE_MAX_PIXELS, aspect ratio kept,
  never enlarged; tiny images (a side under MIN_SIDE) and absurd aspect ratios (over
  MAX_ASPECT_RATIO) are skipped: the processors fail on them (a 2000x2 strip shrinks to a 1-pixel
  side, which Idefics2's image splitting divides by zero; CLIP's shortest-edge resize would blow a
  3x3000 strip up to 336x336,000 pixels).

What is stored for training: the original bytes when nothing had to change (an upright RGB JPEG,
PNG or WebP already small enough: no quality lost, no time spent encoding); otherwise the clean
image, as a JPEG (quality 95) when it came from a JPEG and as a lossless PNG otherwise. JPEGs are
decoded at a reduced scale when they are at least twice the size needed (libjpeg's DCT scaling,
as `Image.thumbnail` does), which makes large photos several times cheaper to prepare.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 2  # anything smaller cannot be a real picture; the processors fail on it
MAX_ASPECT_RATIO = 20  # wider panoramas than ~8:1 and taller scans than ~1:10 are rare; 20:1 keeps them
JPEG_QUALITY = 95  # for JPEGs that had to be shrunk, rotated or converted: visually lossless
KEPT_FORMATS = ("JPEG", "PNG", "WEBP")  # formats stored as they came when nothing had to change
_ORIENTATION = 0x0112  # EXIF tag
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
_HIGH_DEPTH = ("I", "F")  # PIL modes of 16-bit, 32-bit and float images ("I;16" and friends start with "I")


class ImageProblem(Exception):
    """An image no processor should be given; str() is the reason, as counted in data_report.json."""


@dataclass(frozen=True)
class SizeLimit:
    """Keep the longer side <= `longest` and width x height <= `max_pixels`, but never make the shorter
    side < `shortest` (nor < MIN_SIDE)."""

    longest: int | None = None
    shortest: int | None = None
    max_pixels: int | None = None


@dataclass(frozen=True)
class CleanImage:
    size: tuple[int, int]  # (width, height) of the stored image: what the processor will see
    stored: dict[str, Any]  # {"bytes": ..., "path": None}: what datasets' Image feature stores


def size_limit(image_processor: Any, max_pixels: int | None = None) -> SizeLimit:
    """What the processor resizes to, read from its own settings, and DPO_IMAGE_MAX_PIXELS."""
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if pinpoints:  # LLaVA-NeXT "anyres": the largest grid it can tile into
        return SizeLimit(longest=max(max(p) for p in pinpoints), max_pixels=max_pixels)
    size = getattr(image_processor, "size", None) or {}
    size = size if isinstance(size, dict) else vars(size)
    if getattr(image_processor, "merge_size", None) and size.get("longest_edge"):
        # Qwen2-VL's image processor (Qwen2.5-VL, Qwen3-VL): size holds pixel COUNTS (min_pixels as
        # shortest_edge, max_pixels as longest_edge), not sides; it resizes within them, so only max_pixels limits
        budget = int(size["longest_edge"])
        return SizeLimit(max_pixels=min(budget, max_pixels) if max_pixels else budget)
    if getattr(image_processor, "do_pan_and_scan", None) and size.get("height"):
        # Gemma 3 with pan-and-scan: crops of the long side are each resized to the full size, so keep their pixels
        crops = int(getattr(image_processor, "pan_and_scan_max_num_crops", None) or 1)
        return SizeLimit(longest=max(int(size["height"]), int(size["width"])) * crops, max_pixels=max_pixels)
    if size.get("longest_edge"):
        return SizeLimit(longest=int(size["longest_edge"]), max_pixels=max_pixels)
    if size.get("shortest_edge"):
        return SizeLimit(shortest=int(size["shortest_edge"]), max_pixels=max_pixels)
    if size.get("height") and size.get("width"):
        return SizeLimit(longest=max(int(size["height"]), int(size["width"])), max_pixels=max_pixels)
    return SizeLimit(max_pixels=max_pixels)


def size_problem(width: int, height: int) -> str:
    """Why no processor should be given an image of this size, or '' when it is fine."""
    if min(width, height) < MIN_SIDE:
        return f"image too small (a side under {MIN_SIDE} px)"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return f"image aspect ratio over {MAX_ASPECT_RATIO}:1"
    return ""


def _scale(width: int, height: int, limit: SizeLimit) -> float:
    """The shrink factor that meets every limit (1.0: none needed; never above 1: never enlarged)."""
    scale = 1.0
    if limit.longest and max(width, height) > limit.longest:
        scale = limit.longest / max(width, height)
    elif limit.shortest and min(width, height) > limit.shortest:
        scale = limit.shortest / min(width, height)
    if limit.max_pixels and width * height * scale * scale > limit.max_pixels:
        scale = (limit.max_pixels / (width * height)) ** 0.5
    return scale


def target_size(width: int, height: int, limit: SizeLimit) -> tuple[int, int]:
    """The size an image of this size is shrunk to (itself when no shrinking is needed)."""
    scale = _scale(width, height, limit)
    if scale >= 1.0:
        return width, height
    size = [max(MIN_SIDE, round(side * scale)) for side in (width, height)]
    if limit.max_pixels and size[0] * size[1] > limit.max_pixels:  # rounded up past it: round down
        size = [max(MIN_SIDE, int(side * scale)) for side in (width, height)]
    return size[0], size[1]


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, whatever the mode: transparency on white, high bit depths stretched to their own range."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith(_HIGH_DEPTH):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        grey = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def clean_image(image: Image.Image, limit: SizeLimit) -> Image.Image:
    """RGB (see `to_rgb`), shrunk with its aspect ratio kept; never enlarged."""
    image = to_rgb(image)
    size = target_size(*image.size, limit)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def _read(value: Any, image_dir: Path | None) -> tuple[bytes | None, Image.Image | None]:
    """The encoded bytes of an image value, or the image itself when the value is already decoded."""
    if isinstance(value, Image.Image):
        return None, value
    if isinstance(value, dict):  # datasets' undecoded Image: {"bytes": ..., "path": ...}
        if value.get("bytes") is not None:
            return bytes(value["bytes"]), None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ImageProblem("missing image")
    if not isinstance(value, (str, Path)):
        raise ImageProblem(f"image is not an image, bytes or path ({type(value).__name__})")
    path = Path(value).expanduser()
    if not path.is_absolute():
        if image_dir is None:
            raise ImageProblem("image path is relative and there is no image folder (set DPO_IMAGE_DIR)")
        path = image_dir / path
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        raise ImageProblem("image file not found") from None
    except OSError as exc:
        raise ImageProblem(f"image file unreadable ({exc.strerror or type(exc).__name__})") from None


def _bomb(width: int, height: int) -> str:
    return (f"unreadable image: decompression bomb ({width}x{height} is over PIL's limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels)")


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageProblem("unreadable image: empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageProblem("unreadable image: not an image") from None
    except Image.DecompressionBombError:
        raise ImageProblem("unreadable image: decompression bomb (over PIL's pixel limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageProblem("unreadable image: corrupt") from None
    width, height = image.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ImageProblem(_bomb(width, height))
    return image


def _decode(image: Image.Image, draft_to: tuple[int, int] | None) -> Image.Image:
    """Decode every pixel (at a reduced JPEG scale when `draft_to` allows it): a truncated or corrupt
    file fails here."""
    try:
        if draft_to and image.format == "JPEG":
            image.draft(image.mode if image.mode in ("RGB", "L") else None, draft_to)
        image.load()
    except Image.DecompressionBombError:
        raise ImageProblem(_bomb(*image.size)) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError):
        raise ImageProblem("unreadable image: truncated or corrupt") from None
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block only means no rotation is known
        return 1


def _encode(image: Image.Image, as_jpeg: bool) -> bytes:
    buffer = io.BytesIO()
    if as_jpeg:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "PNG", compress_level=1)  # lossless; level 1 is ~6x faster than the default
    return buffer.getvalue()


def load_image(value: Any, limit: SizeLimit, image_dir: Path | None = None) -> CleanImage:
    """Any image value (datasets' {"bytes", "path"}, bytes, a path, a PIL image) -> a clean image to store.

    Raises ImageProblem with the reason when it cannot be used.
    """
    with warnings.catch_warnings():  # PIL's warnings (EXIF, palettes, bombs) are dealt with here
        warnings.simplefilter("ignore")
        data, image = _read(value, image_dir)
        if image is None:
            image = _open(data)
        orientation = _orientation(image)
        width, height = image.size
        upright = (height, width) if orientation in _SWAPS_SIDES else (width, height)
        problem = size_problem(*upright)
        if problem:
            raise ImageProblem(problem)
        size = target_size(*upright, limit)
        unchanged = (data is not None and size == upright and orientation == 1 and image.mode == "RGB"
                     and image.format in KEPT_FORMATS)
        if unchanged:  # only check that it decodes: at 1/8 scale for a JPEG, which reads every byte
            _decode(image, (max(1, width // 8), max(1, height // 8)))
            return CleanImage(upright, {"bytes": data, "path": None})
        source_format = image.format
        decoded_size = size if orientation not in _SWAPS_SIDES else (size[1], size[0])
        image = _decode(image, (2 * decoded_size[0], 2 * decoded_size[1]))  # >= 2x the target: no visible loss
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        return CleanImage(size, {"bytes": _encode(image, source_format == "JPEG"), "path": None})
