"""`make docs`: the README's generated blocks, from the code that decides them.

`python -m entrypoint.docs --write README.md` replaces each block between its markers: the settings reference
(config/reference.py), the image-token table (measured with the published processors), the dataset formats and
the presets. A test checks that every block in the README is current.
"""

from __future__ import annotations

import sys

from entrypoint.config.reference import markdown, presets_markdown

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
TOKENS_START, TOKENS_END = "<!-- image-tokens:start -->", "<!-- image-tokens:end -->"
FORMATS_START, FORMATS_END = "<!-- formats:start -->", "<!-- formats:end -->"
PRESETS_START, PRESETS_END = "<!-- presets:start -->", "<!-- presets:end -->"


def formats_markdown() -> str:
    """The dataset formats, in the order `DPO_DATASET_FORMAT=auto` tries them."""
    from entrypoint.data.formats import FORMATS

    lines = ["| `DPO_DATASET_FORMAT` | detected when the columns include | what it reads |", "|---|---|---|"]
    for fmt in FORMATS.values():
        lines.append(f"| `{fmt.name}` | {', '.join(f'`{c}`' for c in sorted(fmt.required))} | {fmt.description} |")
    return "\n".join(lines) + "\n"


# The image-token table: sizes (width x height) and columns (family, DPO_MAX_IMAGE_TILES, DPO_IMAGE_MAX_PIXELS).
TABLE_SIZES = [(336, 336), (640, 480), (1024, 768), (1920, 1080), (4000, 3000), (300, 1200), (2000, 500), (50, 50)]
TABLE_COLUMNS = [("llava-next", None, None), ("llava-next", 2, None), ("llava-next", 1, None),
                 ("llava-next", None, 336 * 336), ("llava", None, None), ("idefics2", None, None),
                 ("idefics2", 1, None), ("qwen2.5-vl", None, None), ("qwen2.5-vl", None, 1024 * 28 * 28),
                 ("qwen3-vl", None, None), ("qwen3-vl", None, 1024 * 32 * 32), ("gemma3", None, None),
                 ("gemma3", 2, None)]


def image_token_markdown() -> str:
    """Tokens an image takes for each family and setting, measured with the published processors (the
    `shapes:` models') after the job's own image cleaning: the numbers a run's token budget uses."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from entrypoint.data.images import clean_image, size_limit
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.image_tokens import ImageTokens, limit_pixels, limit_tiles
    from entrypoint.models.loading import processor_class
    from entrypoint.models.published import PUBLISHED
    from entrypoint.models.shapes import build_shapes

    columns, header = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family, tiles, pixels in TABLE_COLUMNS:
            processor = processor_class(FAMILIES[family]).from_pretrained(build_shapes(family, Path(tmp) / family))
            limit_tiles(FAMILIES[family], processor, tiles)
            limit_pixels(FAMILIES[family], processor, pixels)
            count, limit = ImageTokens(processor), size_limit(processor.image_processor, pixels)
            columns.append([count(clean_image(Image.new("RGB", size), limit).size) for size in TABLE_SIZES])
            setting = (f"`DPO_MAX_IMAGE_TILES={tiles}`" if tiles else f"`DPO_IMAGE_MAX_PIXELS={pixels}`" if pixels
                       else "default")
            header.append(f"{PUBLISHED[family].repo.split('/')[1]}<br>{setting}")
    lines = ["| image (w x h) | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for i, (width, height) in enumerate(TABLE_SIZES):
        lines.append(f"| {width}x{height} | " + " | ".join(f"{column[i]:,}" for column in columns) + " |")
    return "\n".join(lines) + "\n"


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{body}{end}{tail}"


def update_readme(path: str) -> bool:
    """Replace the generated blocks in the README; returns whether it changed."""
    with open(path) as handle:
        text = handle.read()
    new = _replace_block(text, START, END, markdown())
    new = _replace_block(new, TOKENS_START, TOKENS_END, image_token_markdown())
    new = _replace_block(new, FORMATS_START, FORMATS_END, formats_markdown())
    new = _replace_block(new, PRESETS_START, PRESETS_END, presets_markdown())
    if new != text:
        with open(path, "w") as handle:
            handle.write(new)
    return new != text


def main(argv: list[str]) -> None:
    if argv[:1] == ["--write"] and len(argv) == 2:
        print("updated" if update_readme(argv[1]) else "unchanged", argv[1])
    else:
        sys.stdout.write(markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
