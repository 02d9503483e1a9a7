"""The eval split, by group: pairs that share an image or a prompt go to the same side.

A random split of rows puts the same image on both sides wherever a dataset has several rows an image (RLAIF-V:
several pairs an image and question; VQA-RAD: about 7 questions an image), and "base vs tuned" then rewards
memorising. Each pair has keys: its images' content (sha256 of the stored bytes) and its prompt (every turn's text,
case and spacing normalised, together with its images' content). Pairs that share a key are one group, and so are
groups linked by a key (connected components); whole groups go to eval in an order drawn from the seed, each one
that still fits, until the eval share is met.

A prompt is its text with its images: the same question about different images is not a leak, and keying on the
text alone would join every row of a generic instruction ("Describe the image.", "Is there a lesion present?")
into one group, and through their images, most of a dataset. For text-only pairs the prompt is the text.

The same keys leave out of training the pairs that share an image or a prompt with an eval set
(DPO_EVAL_DATASET).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from entrypoint.errors import ConfigError

IMAGE, PROMPT = "image:", "prompt:"  # the kinds of key, as prefixes


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """Every turn of a prompt as one normalised text (role and words; images are keyed by their content)."""
    parts = []
    for message in messages:
        content = message["content"]
        text = content if isinstance(content, str) else " ".join(p["text"] for p in content if p.get("text"))
        parts.append(f"{message['role']}: {' '.join(text.lower().split())}")
    return "\n".join(parts)


def pair_keys(prompt: list[dict[str, Any]], image_bytes: list[bytes]) -> list[str]:
    """A pair's keys: one for each image's content, and one for its prompt (text and images)."""
    images = [_digest(data) for data in image_bytes]
    return [*(IMAGE + image for image in images),
            PROMPT + _digest(json.dumps([prompt_text(prompt), images]).encode())]


def groups(keys: list[list[str]]) -> list[int]:
    """The group of each pair (pairs linked by shared keys, transitively), numbered by first appearance."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, own in enumerate(keys):
        for key in own:
            j = owner.setdefault(key, i)
            if j != i:
                parent[root(i)] = root(j)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(keys))]


def eval_groups(group_of: list[int], n_eval: int, seed: int) -> set[int]:
    """Whole groups, in an order drawn from `seed`, each one that still fits into `n_eval` pairs. When none fits
    (every group is larger), the smallest, first in that order: the eval share is met within one group either way."""
    import numpy as np

    sizes = Counter(group_of)
    order = [int(g) for g in np.random.default_rng(seed).permutation(len(sizes))]
    chosen: set[int] = set()
    taken = 0
    for group in order:
        if taken + sizes[group] <= n_eval:
            chosen.add(group)
            taken += sizes[group]
            if taken == n_eval:
                break
    return chosen or {min(order, key=lambda g: sizes[g])}


def grouped_split(keys: list[list[str]], n_eval: int, seed: int, setting: str = "DPO_EVAL_FRACTION",
                  ) -> tuple[list[int], list[int], dict[str, Any]]:
    """(train indices, eval indices, the split's report). ConfigError when no group can be held out and leave any
    pair to train on."""
    group_of = groups(keys)
    chosen = eval_groups(group_of, n_eval, seed)
    evaluation = [i for i, group in enumerate(group_of) if group in chosen]
    train = [i for i, group in enumerate(group_of) if group not in chosen]
    if not train:
        raise ConfigError(f"{setting}: all {len(keys)} pairs share images or prompts with one another (one group), "
                          "so none can be held out without the same image or prompt in training; set "
                          "DPO_EVAL_DATASET to evaluate on another set, or DPO_EVAL_FRACTION=0")
    return train, evaluation, split_report(keys, group_of, train, evaluation, n_eval)


def _side(keys: list[list[str]], group_of: list[int], indices: list[int]) -> dict[str, Any]:
    mine = {key for i in indices for key in keys[i]}
    return {"pairs": len(indices), "groups": len({group_of[i] for i in indices}),
            "images": {key for key in mine if key.startswith(IMAGE)},
            "prompts": {key for key in mine if key.startswith(PROMPT)}}


def split_report(keys: list[list[str]], group_of: list[int], train: list[int], evaluation: list[int],
                 n_eval: int) -> dict[str, Any]:
    """What data_report.json says of the split: groups, pairs, images and prompts on each side, and how many images
    and prompts both sides hold (counted from the pairs, not assumed)."""
    sides = {"train": _side(keys, group_of, train), "eval": _side(keys, group_of, evaluation)}
    shared = {kind: len(sides["train"][kind] & sides["eval"][kind]) for kind in ("images", "prompts")}
    return {"by": "image content and prompt", "target_eval_pairs": n_eval,
            "largest_group": max(Counter(group_of).values()),
            **{side: {**counts, "images": len(counts["images"]), "prompts": len(counts["prompts"])}
               for side, counts in sides.items()},
            "shared": shared}
