"""How many tokens an image costs, and DPO_MAX_IMAGE_TILES / DPO_IMAGE_MAX_PIXELS, the settings that change it.

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
- dynamic (Qwen2.5-VL, Qwen3-VL): no tiles. The processor resizes each image to multiples of 28 px
  (patch 14 x merge 2; Qwen3-VL 32 px: patch 16 x merge 2) with its pixel count between min_pixels
  and max_pixels, and an image costs (h / 28) x (w / 28) tokens. The published max_pixels are huge
  (12,845,056 and 16,777,216: up to 16,384 tokens an image, the out-of-memory reports of Qwen-VL
  fine-tuning), so the lever is DPO_IMAGE_MAX_PIXELS, which sets max_pixels (`limit_pixels`); the
  model reads each image's grid from the processor's image_grid_thw, so it has nothing to follow.
  DPO_MAX_IMAGE_TILES has no meaning here and is refused, naming DPO_IMAGE_MAX_PIXELS.
- pan-and-scan (Gemma 3): one 896-px image of 256 tokens, pan-and-scan off as the checkpoint ships.
  DPO_MAX_IMAGE_TILES=n (n >= 2) turns it on with at most n crops beside the whole image, as for the
  other families the tiles are counted beside the base image: a wide or tall image (aspect ratio
  1.2 or more) then also costs 256 tokens a crop (plus a sentence introducing them); 1 keeps it off.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from entrypoint.errors import ConfigError
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
    elif family.tiling == "pan-and-scan":
        _pan_and_scan(processor, max_tiles if max_tiles >= 2 else 0)
    elif family.tiling == "dynamic":
        side = _token_side(image_processor)
        raise ConfigError(f"DPO_MAX_IMAGE_TILES={max_tiles}: {family.name} cuts no image into tiles; an image costs "
                          f"one token per {side}x{side} pixels, up to the processor's max_pixels (now "
                          f"{max_pixels(image_processor):,}): set DPO_IMAGE_MAX_PIXELS instead, e.g. "
                          f"DPO_IMAGE_MAX_PIXELS={_pixels_for(image_processor, 1024)} (at most 1,024 tokens an image)")


def _pan_and_scan(processor: Any, crops: int) -> None:
    """Gemma 3's pan-and-scan on with at most `crops` crops (>= 2), or off (0). The processor's own defaults
    (class attribute `images_kwargs`) override the image processor's settings at every call, so they are set
    there; the image processor's copy records the setting in the saved preprocessor_config.json."""
    on = crops >= 2
    processor.images_kwargs = {**type(processor).images_kwargs, "do_pan_and_scan": on,
                               **({"pan_and_scan_max_num_crops": crops} if on else {})}
    processor.image_processor.do_pan_and_scan = on
    processor.image_processor.pan_and_scan_max_num_crops = crops if on else None


def pan_and_scan_crops(processor: Any) -> int:
    """The most crops Gemma 3's pan-and-scan adds beside the whole image (0: off)."""
    kwargs = getattr(processor, "images_kwargs", {}) or {}
    return int(kwargs.get("pan_and_scan_max_num_crops") or 0) if kwargs.get("do_pan_and_scan") else 0


def max_pixels(image_processor: Any) -> int:
    """A pixel-budget processor's max_pixels (Qwen2-VL's image processor keeps it in size["longest_edge"])."""
    return int(image_processor.size["longest_edge"])


def _token_side(image_processor: Any) -> int:
    """Pixels along one side of an image token: patch x merge (28 for Qwen2.5-VL, 32 for Qwen3-VL)."""
    return int(image_processor.patch_size) * int(image_processor.merge_size)


def _pixels_for(image_processor: Any, tokens: int) -> int:
    """The max_pixels that allows `tokens` image tokens."""
    return tokens * _token_side(image_processor) ** 2


def limit_pixels(family: Family, processor: Any, pixels: int | None) -> None:
    """DPO_IMAGE_MAX_PIXELS as the processor's own max_pixels, for the families that resize to a pixel budget (in
    place; it only lowers the checkpoint's). The other families' images are shrunk before the processor
    (data/images.py), which is the same limit seen from the other side."""
    if pixels is None or family.tiling != "dynamic":
        return
    image_processor = processor.image_processor
    low = int(image_processor.size["shortest_edge"])
    if pixels < low:
        raise ConfigError(f"DPO_IMAGE_MAX_PIXELS={pixels} is below {family.name}'s min_pixels ({low:,}: "
                          f"{low // _token_side(image_processor) ** 2} tokens an image); set at least {low}")
    image_processor.size["longest_edge"] = min(pixels, max_pixels(image_processor))


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


def same_for_every_size(family: Family, processor: Any) -> bool:
    """Whether every image costs the same tokens whatever its size, with this processor."""
    return family.image_tokens_fixed or (family.tiling == "pan-and-scan" and not pan_and_scan_crops(processor))


def tiles_per_image(family: Family, processor: Any) -> int:
    """The most crops the vision tower sees for one image (the base image included)."""
    image_processor = processor.image_processor
    if family.tiling == "anyres":
        tile = _tile_side(image_processor)
        return 1 + max((h // tile) * (w // tile) for h, w in image_processor.image_grid_pinpoints)
    if family.tiling == "split":
        return 5 if image_processor.do_image_splitting else 1
    if family.tiling == "pan-and-scan":
        return 1 + pan_and_scan_crops(processor)
    return 1


def patches_per_image(family: Family, processor: Any) -> int | None:
    """The most patches the vision tower sees for one image when the processor, not the model config, decides
    it (a pixel budget: max_pixels / patch^2); None where the config's image size does."""
    if family.tiling != "dynamic":
        return None
    return max_pixels(processor.image_processor) // int(processor.image_processor.patch_size) ** 2


def max_image_tokens(family: Family, processor: Any) -> int | None:
    """The most tokens one image may cost under a pixel budget (None for the other families)."""
    if family.tiling != "dynamic":
        return None
    return max_pixels(processor.image_processor) // _token_side(processor.image_processor) ** 2


def image_budget(family: Family, processor: Any, pixels_setting: int | None) -> str | None:
    """For the memory plan: what a pixel budget lets one image cost, and whether it is the checkpoint's own."""
    tokens = max_image_tokens(family, processor)
    if tokens is None:
        return None
    whose = "DPO_IMAGE_MAX_PIXELS" if pixels_setting else "the checkpoint's own; DPO_IMAGE_MAX_PIXELS lowers it"
    return (f"images: at most {max_pixels(processor.image_processor):,} pixels each ({whose}): up to {tokens:,} "
            f"tokens and {patches_per_image(family, processor):,} vision patches an image")


def fewer_tokens_hint(family: Family, processor: Any) -> str | None:
    """The setting that spends fewer tokens an image for this family and processor, if there is one."""
    if family.tiling == "anyres":
        return "DPO_MAX_IMAGE_TILES=1 or DPO_IMAGE_MAX_PIXELS" if tiles_per_image(family, processor) > 2 \
            else "DPO_IMAGE_MAX_PIXELS"
    if family.tiling == "split" and processor.image_processor.do_image_splitting:
        return "DPO_MAX_IMAGE_TILES=1"
    if family.tiling == "pan-and-scan" and pan_and_scan_crops(processor):
        return "DPO_MAX_IMAGE_TILES=1 (pan-and-scan off)"
    if family.tiling == "dynamic":
        image_processor = processor.image_processor
        now = f"now {max_pixels(image_processor):,} pixels, up to {max_image_tokens(family, processor):,} tokens"
        suggested = _pixels_for(image_processor, 1024)
        if suggested < max_pixels(image_processor):
            return f"DPO_IMAGE_MAX_PIXELS={suggested} (at most 1,024 tokens an image; {now})"
        return f"a lower DPO_IMAGE_MAX_PIXELS ({now} an image)"
    return None
