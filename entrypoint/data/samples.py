"""Small generated datasets (`DPO_DATASET=sample:<name>`), so the whole job runs with no network.

Each sample copies the exact schema of the real dataset it stands for, so it goes through the very
same code path (format detection, image cleaning, collation) as the real thing:

- `rlaif-v`: openbmb/RLAIF-V-Dataset: coloured shapes, questions about them, a correct `chosen`
  and a `rejected` that gets the colour, shape or count wrong or hallucinates an object.
- `rlaif-v-photos`: the same rows (schema, questions, answers, modes) with images at real photo
  sizes, `PHOTO_SIZES` (640x480 up to 4000x3000, panoramas, tall scans, a 50x50 thumbnail), so a
  model at its real processor geometry pays real image-token costs. Row i has size
  `PHOTO_SIZES[i % len(PHOTO_SIZES)]`: every 16 rows hold each size once. Flat colours keep the
  PNGs small (32 rows: about 0.3 MB).
- `vqa-rad`: flaviagiammarino/vqa-rad: greyscale "scans" of a brain, lungs or liver, with or
  without a bright "lesion"; half yes/no questions, half open ones, like the real set, and several
  questions about each scan (`DEFAULT_REPEATS`: 4 rows a scan; the real set asks about 7 an image).
- `text`: a plain (non-conversational) preference set, prompt/chosen/rejected strings: polite
  correct answers to sums and facts are chosen, wrong or rude ones rejected.
- `rlhf-v`: openbmb/RLHF-V-Dataset: the content of `rlaif-v` (drawn from other seeds, so the rows
  differ), with question, chosen and rejected as one JSON object in the `text` column and an int `idx`.
- `pope`: lmms-lab/POPE (object hallucination, yes/no): each generated image holds 3 of `POPE_OBJECTS`
  (shapes), and is asked about in POPE's 3 categories, 6 questions each, as POPE asks them: 3 about
  objects in the image (answer "yes") and 3 about objects that are not (answer "no"), the absent ones
  drawn at random (`random`), the most frequent objects of the set (`popular`), or the objects that
  most often come with the ones drawn (`adversarial`). 18 rows an image, image by image (the real set
  is ordered by category).
- `llava-conversations`: LLaVA's conversation JSON (liuhaotian/LLaVA-Pretrain's
  blip_laion_cc_sbu_558k.json): a JSON array of {"id", "image", "conversations"} whose images are
  RGB JPEG files at relative paths (`00000/000000012.jpg`) beside the JSON, in a directory of its
  own (`write_sample` returns the JSON's path). A human asks for a brief caption with one of LLaVA's
  instructions, `<image>` before or after it; the gpt caption names the colour, count and shape
  drawn. Every 4th row goes on as in LLaVA-Instruct (a question about the colour or the count, and
  its answer); one row in 8 is stored rotated with EXIF orientation 6, as phones do. The
  rejected answer is built by the format, from the other rows' answers.

The preferences follow from the content (the image, the sum), so a model can in principle learn
them: a training run on a sample shows a real signal, not noise. Images have varied sizes (24-96 px,
drawn at random, except in `rlaif-v-photos`) and, for `rlaif-v`, `rlaif-v-photos` and `rlhf-v`, the
modes (L, RGBA, P) that real data brings, to exercise the RGB conversion. Shapes are drawn in proportion
to the image, so they stay visible at any size.

Every row is drawn from its own RNG seeded by (name, seed, row index): the same seed gives the same
file, byte for byte (for `llava-conversations`, the JSON and every JPEG), and a longer sample starts
with the rows of a shorter one. Rows that share an image (`repeats`, as real preference and VQA sets
have several rows an image) draw the picture from an RNG of their first row's index and the rest
from their own.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pathlib
import random
import shutil

import numpy as np
from PIL import Image, ImageDraw

from entrypoint.errors import ConfigError

SAMPLES: tuple[str, ...] = ("rlaif-v", "rlaif-v-photos", "vqa-rad", "text", "rlhf-v", "llava-conversations", "pope")
# Rows that share one image, by sample (1 where not named): the default of `write_sample`'s `repeats`.
DEFAULT_REPEATS = {"vqa-rad": 4}
REPEATABLE = ("rlaif-v", "rlaif-v-photos", "rlhf-v", "vqa-rad")  # the samples `repeats` applies to

MIN_SIDE, MAX_SIDE = 24, 96
# `rlaif-v-photos`' image sizes (width, height), cycled by row index. With 8 modes cycling beside
# them, size k always comes in mode _MODES[k % 8]: 1920x1080 RGBA, 3024x4032 and 2000x500 P,
# 1024x768 and 1080x2400 L, 336x336 RGBA, the rest RGB.
PHOTO_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480), (800, 600), (1024, 768), (1280, 720),  # phone and camera photos, landscape
    (1920, 1080), (2048, 1536),
    (3024, 4032),  # portrait phone photo (12 MP)
    (4000, 3000),  # 12 MP camera photo
    (4000, 1000), (3000, 600),  # panoramas
    (1080, 2400), (600, 3000),  # tall phone screenshot, tall scan
    (336, 336),  # exactly a CLIP-336 tile
    (300, 1200), (2000, 500),  # thin strips, tall and wide
    (50, 50),  # smaller than any processor's input: the processor upscales it
)
SAMPLE_VERSION = 2  # in the file name: bump when the generator changes, so cached samples are not reused


def _features(name: str):
    """The schemas of the real datasets (from their dataset cards); `text` is TRL's standard format.
    For `llava-conversations`, a JSON file, the columns that datasets' json builder reads from it."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    string = Value("string")
    rlaif_v = {"ds_name": string, "image": ImageFeature(), "question": string, "chosen": string,
               "rejected": string, "origin_dataset": string, "origin_split": string, "idx": string,
               "image_path": string}
    columns = {
        "rlaif-v": rlaif_v,
        "rlaif-v-photos": rlaif_v,
        "vqa-rad": {"image": ImageFeature(), "question": string, "answer": string},
        "text": {"prompt": string, "chosen": string, "rejected": string},
        "rlhf-v": {"ds_name": string, "image": ImageFeature(), "text": string, "origin_dataset": string,
                   "origin_split": string, "idx": Value("int64"), "image_path": string},
        "llava-conversations": {"id": string, "image": string,
                                "conversations": List({"from": string, "value": string})},
        "pope": {"id": string, "question_id": string, "question": string, "answer": string, "image_source": string,
                 "image": ImageFeature(), "category": string},
    }[name]
    return Features(columns)


def _png(image: Image.Image) -> dict[str, object]:
    """PNG bytes as the `Image` feature stores them; encoded here so the bytes are ours to pin."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _size(rng: random.Random) -> tuple[int, int]:
    return rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)


def _random_size(i: int, rng: random.Random) -> tuple[int, int]:
    return _size(rng)


def _photo_size(i: int, rng: random.Random) -> tuple[int, int]:
    return PHOTO_SIZES[i % len(PHOTO_SIZES)]


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _other(rng: random.Random, options, wrong_for):
    return rng.choice([o for o in options if o != wrong_for])


# --- rlaif-v -------------------------------------------------------------------------------------

_COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30),
           "purple": (140, 50, 170), "orange": (245, 140, 20)}
_GREYS = {"white": 255, "black": 0}  # shape colours in the greyscale images, drawn on grey
_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
_SHAPES = ("square", "circle", "triangle")
_NUMBERS = ("zero", "one", "two", "three", "four")
_OBJECTS = ("dog", "tree", "car", "person", "cup", "clock")
# Row i's mode is fixed by its position, so every sample of 8 rows or more has each of them.
_MODES = ("RGB", "RGB", "L", "RGB", "RGBA", "RGB", "P", "RGB")


def _things(count: int, shape: str) -> str:
    return f"{_NUMBERS[count]} {shape}{'s' if count != 1 else ''}"


def _draw_shapes(image: Image.Image, shape: str, count: int, fill) -> None:
    """`count` shapes in a row (or a column, for tall images), one per cell, so none overlap."""
    width, height = image.size
    across = width >= height
    cell_w, cell_h = (width / count, height) if across else (width, height / count)
    side = 0.7 * min(cell_w, cell_h)
    draw = ImageDraw.Draw(image)
    for k in range(count):
        cx = (k + 0.5) * cell_w if across else width / 2
        cy = height / 2 if across else (k + 0.5) * cell_h
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        if shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)


def _rlaif_v_row(i: int, rng: random.Random, seed: int, size_of=_random_size, picture: random.Random | None = None,
                 first: int | None = None) -> dict[str, object]:
    """Row i; `size_of(i, rng)` picks the image size (drawn from `rng` where it must be, after the
    shape and count, so `rlaif-v` keeps the same draws and the same bytes). `picture`, `first`: the RNG
    the image is drawn from and the row it belongs to, when rows share it (`rng` and `i` otherwise)."""
    picture, first = picture or rng, i if first is None else first
    mode = _MODES[first % len(_MODES)]
    shape, count = picture.choice(_SHAPES), picture.randint(1, 3)
    size = size_of(first, picture)
    if mode == "L":
        palette, background = _GREYS, "gray"
        color = picture.choice(list(palette))
        image = Image.new("L", size, 128)
        _draw_shapes(image, shape, count, palette[color])
    else:
        palette, background = _COLORS, "white" if mode == "RGBA" else picture.choice(list(_BACKGROUNDS))
        color = picture.choice(list(palette))
        if mode == "RGBA":  # transparent background: white once flattened, as the text says
            image = Image.new("RGBA", size, (255, 255, 255, 0))
            _draw_shapes(image, shape, count, (*palette[color], 255))
        else:
            image = Image.new("RGB", size, _BACKGROUNDS[background])
            _draw_shapes(image, shape, count, palette[color])
            if mode == "P":
                image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    things = _things(count, shape)
    kind = rng.choice(("color", "shape", "count", "describe", "exists"))
    if kind == "color":
        question = rng.choice((f"What color is the {shape} in the image?", f"What is the color of the {shape}?"))
        verb = "is" if count == 1 else "are"
        subject = f"The {shape}" if count == 1 else f"The {shape}s"
        chosen = f"{subject} {verb} {color}."
        rejected = f"{subject} {verb} {_other(rng, palette, color)}."
    elif kind == "shape":
        question = rng.choice(("What shape is shown in the image?", "Which shape can you see in this picture?"))
        chosen = f"The image shows {things}, colored {color}."
        rejected = f"The image shows {_things(count, _other(rng, _SHAPES, shape))}, colored {color}."
    elif kind == "count":
        question = f"How many {shape}s are there in the image?"
        chosen = f"There {'is' if count == 1 else 'are'} {_NUMBERS[count]}."
        wrong = _other(rng, range(1, 5), count)
        rejected = f"There {'is' if wrong == 1 else 'are'} {_NUMBERS[wrong]}."
    elif kind == "describe":
        question = rng.choice(("Describe the image briefly.", "What is in this image?"))
        chosen = f"The image shows {things} in {color} on a {background} background."
        rejected = (f"The image shows {things} in {color} and a small {rng.choice(_OBJECTS)} "
                    f"on a {background} background.")
    else:  # exists: asks about the real shape or another one, so both answers occur
        asked = rng.choice(_SHAPES)
        question = f"Is there {_a(asked)} in the image?"
        yes, no = f"Yes, there is {_a(color)} {asked}.", f"No, there is no {asked}; the image shows {things}."
        chosen, rejected = (yes, f"No, there is no {asked} in the image.") if asked == shape else (
            no, f"Yes, there is {_a(color)} {asked}.")
    return {
        "ds_name": "RLAIF-V",
        "image": _png(image),
        "question": question,
        "chosen": chosen,
        "rejected": rejected,
        "origin_dataset": "synthetic-shapes",
        "origin_split": json.dumps({"model": "generated", "feedback_model": "rule", "type": kind}),
        "idx": f"synthetic-{seed}-{i}",
        "image_path": f"synthetic/{seed}/{first:05d}.png",
    }


def _rlhf_v_row(i: int, rng: random.Random, seed: int, **shared) -> dict[str, object]:
    """An `rlaif-v` row (from this sample's own RNG) in RLHF-V's columns: question, chosen and rejected
    in one JSON object in `text`, and `idx` an int."""
    row = _rlaif_v_row(i, rng, seed, **shared)
    return {
        "ds_name": "RLHF-V",
        "image": row["image"],
        "text": json.dumps({"question": row["question"], "chosen": row["chosen"], "rejected": row["rejected"]}),
        "origin_dataset": row["origin_dataset"],
        "origin_split": row["origin_split"],
        "idx": i,
        "image_path": row["image_path"],
    }


# --- vqa-rad -------------------------------------------------------------------------------------

_ORGANS = ("brain", "lung", "liver")


def _scan(organ: str, lesion: str | None, size: tuple[int, int], noise: np.random.Generator) -> Image.Image:
    """A noisy grey "scan": the organ's outline decides the layout, a lesion is a bright blob."""
    width, height = size
    image = Image.new("L", size, 15)
    draw = ImageDraw.Draw(image)
    if organ == "brain":  # one large round shape
        draw.ellipse((0.1 * width, 0.1 * height, 0.9 * width, 0.9 * height), fill=120)
        regions = {"left": (0.3, 0.5), "right": (0.7, 0.5)}
    elif organ == "lung":  # a bright body with two dark lungs
        draw.rectangle((0.05 * width, 0.15 * height, 0.95 * width, 0.95 * height), fill=150)
        for left in (0.12, 0.55):
            draw.ellipse((left * width, 0.22 * height, (left + 0.33) * width, 0.88 * height), fill=60)
        regions = {"left": (0.28, 0.55), "right": (0.72, 0.55)}
    else:  # liver: a wide body, one organ filling the left of the image
        draw.ellipse((0.02 * width, 0.2 * height, 0.98 * width, 0.85 * height), fill=90)
        draw.ellipse((0.08 * width, 0.3 * height, 0.6 * width, 0.75 * height), fill=140)
        regions = {"left": (0.3, 0.52), "right": (0.78, 0.52)}
    if lesion:
        x, y = regions[lesion]
        r = max(2.0, min(width, height) / 9)
        draw.ellipse((x * width - r, y * height - r, x * width + r, y * height + r), fill=245)
    pixels = np.asarray(image, dtype=np.int16) + noise.integers(-20, 21, size=(height, width))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def _vqa_rad_row(i: int, rng: random.Random, seed: int, picture: random.Random | None = None,
                 first: int | None = None) -> dict[str, object]:
    """Row i: the scan from `picture` (shared by the rows asking about it), the question from `rng`."""
    picture = picture or rng
    organ = picture.choice(_ORGANS)
    lesion = picture.choice((None, "left", "right"))
    image = _scan(organ, lesion, _size(picture), np.random.default_rng(picture.getrandbits(64)))

    def yes_no(flag: object) -> str:
        return "yes" if flag else "no"

    if i % 2 == 0:  # closed, like about half of the real set
        asked = rng.choice(_ORGANS)
        question, answer = rng.choice((
            ("Is there an abnormality in the image?", yes_no(lesion)),
            ("Is there a lesion present?", yes_no(lesion)),
            ("Is this image normal?", yes_no(not lesion)),
            (f"Is this an image of the {asked}?", yes_no(asked == organ)),
        ))
    else:
        options = [("What organ is shown in this image?", organ), ("Which organ is imaged?", organ)]
        if lesion:
            options.append(("Where is the lesion located?", f"{lesion} side"))
        else:
            options.append(("What abnormality is seen?", "none"))
        question, answer = rng.choice(options)
    return {"image": _png(image), "question": question, "answer": answer}


# --- text ----------------------------------------------------------------------------------------

_CAPITALS = {"France": ("Paris", "Lyon"), "Japan": ("Tokyo", "Osaka"), "Italy": ("Rome", "Milan"),
             "Canada": ("Ottawa", "Toronto"), "Australia": ("Canberra", "Sydney"),
             "Germany": ("Berlin", "Munich"), "Spain": ("Madrid", "Barcelona"), "Turkey": ("Ankara", "Istanbul")}
_LEGS = {"spider": 8, "dog": 4, "bird": 2, "ant": 6, "cow": 4, "chicken": 2}
_RUDE = ("That's a silly question. Look it up yourself.", "Why would I tell you? Figure it out.",
         "Ugh, ask someone else.")


def _text_row(i: int, rng: random.Random, seed: int) -> dict[str, object]:
    kind = rng.choice(("sum", "difference", "product", "capital", "legs"))
    if kind in ("sum", "difference", "product"):
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        symbol, value = {"sum": ("+", a + b), "difference": ("-", a - b), "product": ("*", a * b)}[kind]
        prompt = rng.choice((f"What is {a} {symbol} {b}?", f"Compute {a} {symbol} {b}."))
        chosen = f"Sure! {a} {symbol} {b} = {value}."
        wrong = f"{a} {symbol} {b} = {value + rng.choice((-2, -1, 1, 2, 10))}."
    elif kind == "capital":
        country = rng.choice(list(_CAPITALS))
        capital, decoy = _CAPITALS[country]
        prompt = rng.choice((f"What is the capital of {country}?", f"Which city is the capital of {country}?"))
        chosen = f"The capital of {country} is {capital}."
        wrong = f"The capital of {country} is {decoy}."
    else:
        animal = rng.choice(list(_LEGS))
        prompt = f"How many legs does {_a(animal)} have?"
        chosen = f"{_a(animal).capitalize()} has {_LEGS[animal]} legs."
        wrong = f"{_a(animal).capitalize()} has {_other(rng, sorted(set(_LEGS.values())), _LEGS[animal])} legs."
    rejected = rng.choice(_RUDE) if rng.random() < 0.25 else wrong
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# --- pope ----------------------------------------------------------------------------------------

# The objects, most frequent first: an image's objects are drawn with these weights, so the order is also the
# set's frequency order (POPE's `popular` negatives are the most frequent objects not in the image).
POPE_OBJECTS = ("square", "circle", "triangle", "star", "cross", "diamond", "ring", "bar")
_POPE_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 1)
# Objects that come together: an image with one holds the other in 7 of 10 draws (POPE's `adversarial` negatives
# are the absent objects that most often come with the ones in the image).
_POPE_PARTNERS = {"square": "diamond", "diamond": "square", "circle": "ring", "ring": "circle",
                  "triangle": "star", "star": "triangle", "cross": "bar", "bar": "cross"}
POPE_CATEGORIES = ("adversarial", "popular", "random")
POPE_PER_IMAGE = 3  # objects in an image, and questions a category asks with the answer "yes" (and "no")
POPE_ROWS_PER_IMAGE = len(POPE_CATEGORIES) * 2 * POPE_PER_IMAGE


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "star":
        points = [(cx + (r if k % 2 == 0 else r / 2.5) * np.sin(np.pi * k / 5),
                   cy - (r if k % 2 == 0 else r / 2.5) * np.cos(np.pi * k / 5)) for k in range(10)]
        draw.polygon(points, fill=fill)
    elif kind == "cross":
        draw.rectangle((cx - r / 3, y0, cx + r / 3, y1), fill=fill)
        draw.rectangle((x0, cy - r / 3, x1, cy + r / 3), fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(r / 3)))
    else:  # bar
        draw.rectangle((x0, cy - r / 4, x1, cy + r / 4), fill=fill)


def _pope_objects(picture: random.Random) -> list[str]:
    """3 distinct objects by frequency, each one's partner likely beside it."""
    chosen: list[str] = []
    while len(chosen) < POPE_PER_IMAGE:
        partner = _POPE_PARTNERS[chosen[-1]] if chosen else None
        if partner and partner not in chosen and picture.random() < 0.7:
            chosen.append(partner)
            continue
        left = [o for o in POPE_OBJECTS if o not in chosen]
        chosen.append(picture.choices(left, weights=[_POPE_WEIGHTS[POPE_OBJECTS.index(o)] for o in left])[0])
    return chosen


def _pope_negatives(present: list[str], picture: random.Random) -> dict[str, list[str]]:
    """The absent objects each category asks about, as POPE samples them."""
    absent = [o for o in POPE_OBJECTS if o not in present]  # in frequency order
    together = sorted(absent, key=lambda o: -sum(_POPE_PARTNERS[p] == o for p in present))  # stable: then frequency
    return {"adversarial": together[:POPE_PER_IMAGE], "popular": absent[:POPE_PER_IMAGE],
            "random": picture.sample(absent, POPE_PER_IMAGE)}


@functools.lru_cache(maxsize=4)
def _pope_image(seed: int, index: int) -> tuple[dict[str, object], list[str], dict[str, list[str]]]:
    """Image `index`: its PNG, the objects in it (left to right) and the absent ones each category asks about."""
    picture = random.Random(f"pope:{seed}:image:{index}")
    present = _pope_objects(picture)
    cell = picture.randint(MIN_SIDE, MAX_SIDE // 2)
    background = picture.choice(list(_BACKGROUNDS))
    image = Image.new("RGB", (cell * POPE_PER_IMAGE, cell + picture.randint(0, cell // 2)), _BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    colors = picture.sample(list(_COLORS), POPE_PER_IMAGE)
    top = (image.height - cell) / 2
    for k, (kind, color) in enumerate(zip(present, colors, strict=True)):
        draw_box = (k * cell + 0.15 * cell, top + 0.15 * cell, (k + 1) * cell - 0.15 * cell, top + 0.85 * cell)
        _draw_object(draw, kind, draw_box, _COLORS[color])
    return _png(image), present, _pope_negatives(present, picture)


def _pope_row(i: int, rng: random.Random, seed: int) -> dict[str, object]:
    """Row i of image i // 18: category, then yes and no in turn (yes about the image's objects, in order)."""
    index, position = divmod(i, POPE_ROWS_PER_IMAGE)
    category = POPE_CATEGORIES[position // (2 * POPE_PER_IMAGE)]
    k = position % (2 * POPE_PER_IMAGE)
    image, present, negatives = _pope_image(seed, index)
    asked, answer = (present[k // 2], "yes") if k % 2 == 0 else (negatives[category][k // 2], "no")
    return {"id": str(i), "question_id": str(i + 1), "question": f"Is there {_a(asked)} in the image?",
            "answer": answer, "image_source": f"synthetic_{seed}_{index:012d}", "image": image, "category": category}


# --- llava-conversations -------------------------------------------------------------------------

# LLaVA's instructions for brief captions (llava/... pretrain data; the LCS-558K prompts).
_BRIEF = ("Describe the image concisely.", "Provide a brief description of the given image.",
          "Offer a succinct explanation of the picture presented.", "Summarize the visual content of the image.",
          "Give a short and clear explanation of the subsequent image.",
          "Share a concise interpretation of the image provided.",
          "Present a compact description of the photo's key features.",
          "Relay a brief, clear account of the picture shown.", "Render a clear and concise summary of the photo.",
          "Write a terse but informative summary of the picture.",
          "Create a compact narrative representing the image presented.")
_IMAGE_MARKER = "<image>"
JPEG_QUALITY = 90
_EXIF_ORIENTATION = 0x0112


def _jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    """JPEG bytes at a fixed quality (deterministic); with an EXIF orientation tag unless it is 1."""
    buffer = io.BytesIO()
    if orientation == 1:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = orientation
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    return buffer.getvalue()


def _llava_row(i: int, rng: random.Random, seed: int) -> dict[str, object]:
    """Row i as LLaVA has it; `image` is {"bytes", "path"}: the JPEG and the relative path it goes to
    (`write_sample` writes the file and keeps the path). Every 4th row (i % 4 == 3) is multi-turn;
    row i % 8 == 5 is stored turned 90 degrees counter-clockwise with EXIF orientation 6."""
    shape, count = rng.choice(_SHAPES), rng.randint(1, 3)
    size = _size(rng)
    background, color = rng.choice(list(_BACKGROUNDS)), rng.choice(list(_COLORS))
    image = Image.new("RGB", size, _BACKGROUNDS[background])
    _draw_shapes(image, shape, count, _COLORS[color])
    plural = count != 1
    caption = f"{_NUMBERS[count]} {color} {shape}{'s' if plural else ''} on a {background} background"
    request = rng.choice(_BRIEF)
    human = f"{_IMAGE_MARKER}\n{request}" if rng.random() < 0.5 else f"{request}\n{_IMAGE_MARKER}"
    conversations = [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]
    if i % 4 == 3:  # LLaVA-Instruct style: the talk goes on about the same picture
        if rng.random() < 0.5:
            question = f"What color {'are' if plural else 'is'} the {shape}{'s' if plural else ''}?"
            answer = f"The {shape}{'s are' if plural else ' is'} {color}."
        else:
            question = f"How many {shape}s are there in the image?"
            answer = f"There {'are' if plural else 'is'} {_NUMBERS[count]}."
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    orientation = 6 if i % 8 == 5 else 1
    if orientation == 6:  # stored on its side; a viewer turns it 90 degrees clockwise, back upright
        image = image.transpose(Image.Transpose.ROTATE_90)
    row_id = f"{i:09d}"
    return {"id": row_id, "image": {"bytes": _jpeg(image, orientation), "path": f"{row_id[:5]}/{row_id}.jpg"},
            "conversations": conversations}


_ROWS = {"rlaif-v": _rlaif_v_row, "rlaif-v-photos": functools.partial(_rlaif_v_row, size_of=_photo_size),
         "vqa-rad": _vqa_rad_row, "text": _text_row, "rlhf-v": _rlhf_v_row, "llava-conversations": _llava_row,
         "pope": _pope_row}
# Samples written as a JSON file (the name below) with image files beside it, in a directory of their own.
_JSON_SAMPLES = {"llava-conversations": "chat.json"}


def write_sample(name: str, out_dir: pathlib.Path, rows: int = 48, seed: int = 0,
                 repeats: int | None = None) -> pathlib.Path:
    """Write sample `name` in `out_dir` and return the path of its data file: one parquet file, or for
    `llava-conversations` a directory of its own holding the JSON file and its images. `repeats`: rows
    that share one image (`REPEATABLE` samples; default `DEFAULT_REPEATS`, else 1).

    An existing sample of the same name, rows and seed is returned as is (the content is a pure
    function of those). It is written under a temporary name and renamed, so a reader never sees
    half a sample, even with several processes (ranks) writing at once.
    """
    if name not in SAMPLES:
        raise ConfigError(f"unknown sample {name!r}; samples: {', '.join(SAMPLES)}")
    if rows < 1:
        raise ConfigError(f"sample {name}: rows must be >= 1, got {rows}")
    default = DEFAULT_REPEATS.get(name, 1)
    repeats = default if repeats is None else repeats
    if repeats != default and (name not in REPEATABLE or repeats < 1):
        raise ConfigError(f"sample {name}: repeats must be >= 1, for the samples {', '.join(REPEATABLE)}")
    out_dir = pathlib.Path(out_dir)
    stem = f"{name}-{rows}-{seed}-v{SAMPLE_VERSION}" + (f"-x{repeats}" if repeats != default else "")
    if name in _JSON_SAMPLES:
        return _write_json_sample(name, out_dir / stem, _JSON_SAMPLES[name], rows, seed)
    path = out_dir / f"{stem}.parquet"
    if path.is_file():
        return path
    import datasets

    records = _records(name, rows, seed, repeats)
    columns = {key: [record[key] for record in records] for key in records[0]}
    out_dir.mkdir(parents=True, exist_ok=True)
    temp = out_dir / f".{path.name}.{os.getpid()}.tmp"  # not *.parquet: never picked up as data
    try:
        datasets.Dataset.from_dict(columns, features=_features(name)).to_parquet(str(temp))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _records(name: str, rows: int, seed: int, repeats: int = 1) -> list[dict[str, object]]:
    """Row i from its own RNG; with `repeats` > 1 its image from the RNG of the first row that shares it."""
    if repeats == 1:
        return [_ROWS[name](i, random.Random(f"{name}:{seed}:{i}"), seed) for i in range(rows)]
    return [_ROWS[name](i, random.Random(f"{name}:{seed}:{i}"), seed, first=i - i % repeats,
                        picture=random.Random(f"{name}:{seed}:image:{i - i % repeats}")) for i in range(rows)]


def _write_json_sample(name: str, directory: pathlib.Path, file_name: str, rows: int, seed: int) -> pathlib.Path:
    """The JSON array (keys in the order the rows give them) and each row's image file at its relative
    path, built in a temporary directory beside `directory` and renamed to it whole."""
    path = directory / file_name
    if path.is_file():
        return path
    records = _records(name, rows, seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")  # no data suffix: never read as data
    shutil.rmtree(temp, ignore_errors=True)  # left by a killed run whose pid this one reuses
    try:
        temp.mkdir()
        for record in records:
            image = record["image"]
            (temp / image["path"]).parent.mkdir(parents=True, exist_ok=True)
            (temp / image["path"]).write_bytes(image["bytes"])
            record["image"] = image["path"]
        (temp / file_name).write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            os.replace(temp, directory)
        except OSError:  # another process renamed its (identical) copy first: a full directory stays put
            if not path.is_file():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return path
