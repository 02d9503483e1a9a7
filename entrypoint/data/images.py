"""Image hygiene: RGB, and no bigger than the processor will use.

Real datasets hold greyscale, palette and RGBA images and photos of several megapixels; the
processor only ever looks at a few hundred pixels a side. Converting and shrinking once, while the
data is prepared, keeps the collator (which runs every step, for every rank) cheap and the prepared
data small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

MIN_SIDE = 2  # anything smaller cannot be a real picture; the processors fail on it


@dataclass(frozen=True)
class SizeLimit:
    """Keep the longer side <= `longest`, but never make the shorter side < `shortest`."""

    longest: int | None = None
    shortest: int | None = None


def size_limit(image_processor: Any) -> SizeLimit:
    """What the processor resizes to, read from its own settings."""
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if pinpoints:  # LLaVA-NeXT "anyres": the largest grid it can tile into
        return SizeLimit(longest=max(max(p) for p in pinpoints))
    size = getattr(image_processor, "size", None) or {}
    size = size if isinstance(size, dict) else vars(size)
    if size.get("longest_edge"):
        return SizeLimit(longest=int(size["longest_edge"]))
    if size.get("shortest_edge"):
        return SizeLimit(shortest=int(size["shortest_edge"]))
    if size.get("height") and size.get("width"):
        return SizeLimit(longest=max(int(size["height"]), int(size["width"])))
    return SizeLimit()


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
    scale = 1.0
    if limit.longest and max(width, height) > limit.longest:
        scale = limit.longest / max(width, height)
    elif limit.shortest and min(width, height) > limit.shortest:
        scale = limit.shortest / min(width, height)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image
