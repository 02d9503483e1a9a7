"""Image hygiene: RGB, no bigger than the processor will use (or DPO_IMAGE_MAX_PIXELS), no absurd shapes.

Real datasets hold greyscale, palette and RGBA images and photos of several megapixels; the
processor only ever looks at a few hundred pixels a side. Converting and shrinking once, while the
data is prepared, keeps the collator (which runs every step, for every rank) cheap and the prepared
data small.

Images a processor cannot take are skipped with their reason, never passed on: sides under
MIN_SIDE, and aspect ratios over MAX_ASPECT_RATIO (a 2000x2 strip shrinks to a 1-pixel side, which
Idefics2's image splitting divides by zero; CLIP's shortest-edge resize would blow a 3x3000 strip up
to 336x336,000 pixels). Every resize here keeps both sides >= MIN_SIDE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

MIN_SIDE = 2  # anything smaller cannot be a real picture; the processors fail on it
MAX_ASPECT_RATIO = 20  # wider panoramas than ~8:1 and taller scans than ~1:10 are rare; 20:1 keeps them


@dataclass(frozen=True)
class SizeLimit:
    """Keep the longer side <= `longest` and width x height <= `max_pixels`, but never make the shorter
    side < `shortest` (nor < MIN_SIDE)."""

    longest: int | None = None
    shortest: int | None = None
    max_pixels: int | None = None


def size_limit(image_processor: Any, max_pixels: int | None = None) -> SizeLimit:
    """What the processor resizes to, read from its own settings, and DPO_IMAGE_MAX_PIXELS."""
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if pinpoints:  # LLaVA-NeXT "anyres": the largest grid it can tile into
        return SizeLimit(longest=max(max(p) for p in pinpoints), max_pixels=max_pixels)
    size = getattr(image_processor, "size", None) or {}
    size = size if isinstance(size, dict) else vars(size)
    if size.get("longest_edge"):
        return SizeLimit(longest=int(size["longest_edge"]), max_pixels=max_pixels)
    if size.get("shortest_edge"):
        return SizeLimit(shortest=int(size["shortest_edge"]), max_pixels=max_pixels)
    if size.get("height") and size.get("width"):
        return SizeLimit(longest=max(int(size["height"]), int(size["width"])), max_pixels=max_pixels)
    return SizeLimit(max_pixels=max_pixels)


def image_problem(image: Any) -> str:
    """Why no processor should be given this image, or '' when it is fine."""
    if image is None:
        return "missing image"
    width, height = image.size
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


def clean_image(image: Image.Image, limit: SizeLimit) -> Image.Image:
    """RGB (transparency flattened on white), shrunk with its aspect ratio kept; never enlarged."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = _scale(width, height, limit)
    if scale < 1.0:
        size = [max(MIN_SIDE, round(side * scale)) for side in (width, height)]
        if limit.max_pixels and size[0] * size[1] > limit.max_pixels:  # rounded up past it: round down
            size = [max(MIN_SIDE, int(side * scale)) for side in (width, height)]
        image = image.resize(tuple(size), Image.Resampling.BICUBIC)
    return image
