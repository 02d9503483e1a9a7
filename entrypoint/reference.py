"""The settings reference, generated from the one declaration in settings.py.

`python -m entrypoint --help` prints it as text; `make docs` writes it as Markdown into the README
(a test checks the README is current).
"""

from __future__ import annotations

import json
from typing import Any

from entrypoint.settings import Settings, env_name, is_secret, is_trainer_field
from entrypoint.trainer_fields import dpo_config_fields

USAGE = """usage: python -m entrypoint [--dry-run] [--from-run RUN] [--help]

Preference-tune a (vision-)language model with DPO + QLoRA, configured by environment variables.

  --dry-run        validate the settings, the model and data references (and credentials), then exit
  --from-run RUN   run a finished run again (its directory, manifest.json, or s3://.../manifest.json): its
                   recorded settings under any DPO_* variable set, Hub revisions pinned; exit 2 if its base
                   model or data changed (DPO_ALLOW_DRIFT=1 runs anyway)
  --help           show this reference

Exit codes: 0 done; 2 bad setting or input (found before any model is loaded); 75 stopped by SIGTERM
after saving a checkpoint (run again to resume); 1 a bug.
"""


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("NoneType", "None")


def _default(name: str) -> str:
    value = Settings.model_fields[name].default
    if value is None and is_trainer_field(name):  # e.g. `default_optim`: not a literal, shown as written
        return dpo_config_fields()[name].default_text
    return "(unset)" if value is None else json.dumps(value, default=str)


def rows(trainer: bool) -> list[tuple[str, str, str, str]]:
    """(variable, type, default, help) for job settings or for DPOConfig passthrough fields."""
    out = []
    for name, field in Settings.model_fields.items():
        if is_trainer_field(name) != trainer:
            continue
        help_text = (field.description or "") + (" Secret: never logged or saved." if is_secret(name) else "")
        out.append((env_name(name), _type_name(field.annotation), _default(name), help_text))
    return out


def text() -> str:
    lines = [USAGE, "Job settings:"]
    for var, kind, default, help_text in rows(trainer=False):
        lines += [f"  {var}  ({kind}, default {default})", f"      {help_text}"]
    lines += ["", "Training settings: every field of TRL's DPOConfig, as DPO_<FIELD>:"]
    for var, kind, default, help_text in rows(trainer=True):
        lines += [f"  {var}  ({kind}, default {default})", f"      {help_text}"]
    lines += ["", "Presets (DPO_PRESET=<name>; any DPO_* variable overrides them):"]
    lines += [f"  {name}: {summary}" for name, summary in _presets()]
    lines += ["", "Standard variables: HF_TOKEN, WANDB_API_KEY, WANDB_PROJECT, WANDB_MODE, AWS_* (secrets are "
              "never logged or saved)."]
    return "\n".join(lines) + "\n"


def markdown() -> str:
    def table(entries: list[tuple[str, str, str, str]]) -> list[str]:
        lines = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
        for var, kind, default, help_text in entries:
            cells = [f"`{var}`", f"`{kind}`", f"`{default}`", help_text]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return lines

    job = table(rows(trainer=False))
    trainer_rows = rows(trainer=True)
    return "\n".join([
        "### Job settings", "", *job, "",
        "### Training settings", "",
        f"Every field of TRL's `DPOConfig` ({len(trainer_rows)} fields) is settable as `DPO_<FIELD>`, typed and "
        "checked from the dataclass itself; lists take JSON (`[\"sigmoid\",\"sft\"]`) or `a,b`, dicts take JSON. "
        "The ones this job gives its own default:", "",
        *table([r for r in trainer_rows if _is_job_default(r[0])]), "",
        "<details><summary>All DPOConfig fields</summary>", "", *table(trainer_rows), "", "</details>",
    ]) + "\n"


def _is_job_default(var: str) -> bool:
    from entrypoint.settings import TRAINING_DEFAULTS

    return var.removeprefix("DPO_").lower() in TRAINING_DEFAULTS


START, END = "<!-- settings:start -->", "<!-- settings:end -->"
TOKENS_START, TOKENS_END = "<!-- image-tokens:start -->", "<!-- image-tokens:end -->"
FORMATS_START, FORMATS_END = "<!-- formats:start -->", "<!-- formats:end -->"
PRESETS_START, PRESETS_END = "<!-- presets:start -->", "<!-- presets:end -->"


def _presets() -> list[tuple[str, str]]:
    from entrypoint import presets

    return [(name, presets.summary(name)) for name in presets.names()]


def presets_markdown() -> str:
    """The recipes in entrypoint/presets/: the first line of each file's header, and what it sets."""
    from entrypoint import presets

    lines = ["| `DPO_PRESET` | what it is for | settings |", "|---|---|---|"]
    for name, summary in _presets():
        values = ", ".join(f"`{env_name(key)}={value if isinstance(value, str) else json.dumps(value)}`"
                           for key, value in presets.read(name).items())
        lines.append(f"| `{name}` | {summary} | {values} |")
    return "\n".join(lines) + "\n"


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


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        print("updated" if update_readme(sys.argv[2]) else "unchanged", sys.argv[2])
    else:
        sys.stdout.write(markdown())
