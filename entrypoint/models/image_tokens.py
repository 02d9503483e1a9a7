"""How many tokens an image costs, and DPO_MAX_IMAGE_TILES, the setting that changes it per family.

An image's token count is decided by the processor (how it tiles the image) and must agree with
the model (how it splits the vision features back): LLaVA-NeXT's grid pinpoints live in both the
image processor and the model config, and a processor edited alone fails after the model is
loaded ("split_with_sizes expects split_sizes to sum exactly to ..."). So the processor is limited
here, and the model config is always derived from the processor it will be fed by.

- anyres (LLaVA-NeXT): a base image plus a grid of tiles. Only the grid pinpoints with at most
  `max_tiles` tiles are kept; with none left, a single tile ([crop, crop]). llava-v1.6-mistral-7b:
  up to ~2,900 tokens an image with its 4-tile grids, ~1,200 with 1 tile.
- split (Idefics2): 4 crops plus the whole image (5 x 64 tokens) when splitting is on; splitting
  needs 4 tiles, so below 4 it is turned off (64 tokens).
- fixed (LLaVA 1.5): always one image of 576 tokens; the setting changes nothing.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from entrypoint.models.families import Family


def _tile_side(image_processor: Any) -> int:
    crop = getattr(image_processor, "crop_size", None) or {}
    crop = crop if isinstance(crop, dict) else vars(crop)
    return int(crop.get("height") or image_processor.size["shortest_edge"])


def limited_pinpoints(pinpoints: list[list[int]], tile: int, max_tiles: int) -> list[list[int]]:
    """The grid pinpoints of at most `max_tiles` tiles of `tile` px, or one tile when none is that small."""
    kept = [list(p) for p in pinpoints if (p[0] // tile) * (p[1] // tile) <= max_tiles]
    return kept or [[tile, tile]]


def limit_tiles(family: Family, processor: Any, max_tiles: int | None) -> None:
    """Make `processor` spend at most `max_tiles` tiles an image (in place); None keeps the checkpoint's."""
    if max_tiles is None:
        return
    image_processor = processor.image_processor
    if family.tiling == "anyres":
        image_processor.image_grid_pinpoints = limited_pinpoints(
            image_processor.image_grid_pinpoints, _tile_side(image_processor), max_tiles)
    elif family.tiling == "split" and max_tiles < 4:
        image_processor.do_image_splitting = False


def model_overrides(family: Family, processor: Any) -> dict[str, Any]:
    """Model config values that must equal the processor's: passed to from_pretrained."""
    if family.tiling == "anyres":
        return {"image_grid_pinpoints": [list(p) for p in processor.image_processor.image_grid_pinpoints]}
    return {}


# Sizes (width, height) of every shape, on which transformers' token formula must agree with the processor
# before it is trusted: square, landscape, portrait, wide and tall strips, tiny.
PROBE_SIZES = ((336, 336), (640, 480), (1008, 756), (1920, 1080), (480, 640), (300, 1200), (2000, 500), (50, 50))


class ImageTokens:
    """Callable: the tokens one image of a given (width, height) takes in the sequence, as the real
    processor expands it: LLaVA-NeXT's unpadded tiles and newlines, Idefics2's crops and the boundary
    tokens around them.

    Running the processor on an image costs ~25 ms, and real photos rarely share a size. So:
    - where the count does not depend on the size (`same_for_every_size`: LLaVA 1.5's one tile,
      Idefics2's fixed crops), it is measured once;
    - where transformers' own formula exists (`processor._get_num_multimodal_tokens`, what vLLM uses;
      0.05 ms), it is used, but only after it agreed with the processor on PROBE_SIZES;
    - otherwise the processor is run once per distinct size.
    """

    def __init__(self, processor: Any, same_for_every_size: bool = False):
        self.processor = processor
        tokenizer = getattr(processor, "tokenizer", processor)
        # what the image's placeholder in the prompt text counts before the processor expands it
        self.placeholder = len(tokenizer(processor.image_token, add_special_tokens=False)["input_ids"])
        self.same_for_every_size = same_for_every_size
        self._cache: dict[tuple[int, int] | None, int] = {}
        self._formula = None if same_for_every_size else self._checked_formula()

    def measured(self, size: tuple[int, int]) -> int:
        """The processor's own expansion of one image of this size."""
        expanded = self.processor(text=self.processor.image_token, images=[Image.new("RGB", size)],
                                  add_special_tokens=False)["input_ids"][0]
        return len(expanded)

    def _from_formula(self, formula: Any, size: tuple[int, int]) -> int:
        return int(formula(image_sizes=[(size[1], size[0])]).num_image_tokens[0])  # it takes (height, width)

    def _checked_formula(self) -> Any:
        formula = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if formula is None:
            return None
        try:
            agrees = all(self._from_formula(formula, size) == self.measured(size) for size in PROBE_SIZES)
        except Exception:  # noqa: BLE001 - a private method that changed shape: measure instead
            return None
        return formula if agrees else None

    def __call__(self, size: tuple[int, int]) -> int:
        key = None if self.same_for_every_size else tuple(size)
        if key not in self._cache:
            self._cache[key] = self._from_formula(self._formula, size) if self._formula else self.measured(size)
        return self._cache[key]


def tiles_per_image(family: Family, processor: Any) -> int:
    """The most crops the vision tower sees for one image (the base image included)."""
    image_processor = processor.image_processor
    if family.tiling == "anyres":
        tile = _tile_side(image_processor)
        return 1 + max((h // tile) * (w // tile) for h, w in image_processor.image_grid_pinpoints)
    if family.tiling == "split":
        return 5 if image_processor.do_image_splitting else 1
    return 1


def fewer_tokens_hint(family: Family, processor: Any) -> str | None:
    """The setting that spends fewer tokens an image for this family and processor, if there is one."""
    if family.tiling == "anyres":
        return "DPO_MAX_IMAGE_TILES=1 or DPO_IMAGE_MAX_PIXELS" if tiles_per_image(family, processor) > 2 \
            else "DPO_IMAGE_MAX_PIXELS"
    if family.tiling == "split" and processor.image_processor.do_image_splitting:
        return "DPO_MAX_IMAGE_TILES=1"
    return None
