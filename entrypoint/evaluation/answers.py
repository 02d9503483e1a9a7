"""Answers to the eval prompts, base and tuned: greedy generations, task accuracy against the data's own answers
(open questions by token F1; yes/no questions are scored by the model's yes and no tokens, yes_no.py), and the
samples shown side by side."""

from __future__ import annotations

import string
from collections import Counter
from pathlib import Path
from typing import Any

from entrypoint.data.formats import message_text
from entrypoint.logs import progress
from entrypoint.run.outputs import SAMPLES_DIR

MAX_NEW_TOKENS = 64
SAMPLE_IMAGE_PX = 512  # longest side of a saved sample image


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (as SQuAD and VQA scoring do)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def is_closed(reference: str) -> bool:
    """A yes/no question, judged by its reference answer."""
    return normalize_answer(reference) in ("yes", "no")


def closed_correct(prediction: str, reference: str) -> bool:
    """The greedy answer's yes or no (its first word, e.g. "Yes, there is ...") equals the reference's."""
    words = normalize_answer(prediction).split()
    return bool(words) and words[0] == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (SQuAD's F1)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def task_accuracy(references: list[str], answers: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """{"closed": {"questions", "base", "tuned"}, "open": {...}}: exact match of yes/no, token F1 of the rest."""
    closed = [i for i, ref in enumerate(references) if is_closed(ref)]
    open_ = [i for i, ref in enumerate(references) if not is_closed(ref)]
    out: dict[str, dict[str, Any]] = {}
    for kind, indices, score in (("closed", closed, closed_correct), ("open", open_, token_f1)):
        if indices:
            out[kind] = {"questions": len(indices), **{
                model: sum(float(score(given[i], references[i])) for i in indices) / len(indices)
                for model, given in answers.items()}}
    return out


# ---- greedy answers, base and tuned

def prompt_inputs(model: Any, processor: Any, pair: dict[str, Any]) -> Any:
    """A pair's prompt (and images) as the model's generation inputs, on its device."""
    prompt = processor.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
    images = pair.get("images")
    inputs = processor(text=prompt, images=images, return_tensors="pt") if images else processor(
        prompt, return_tensors="pt")
    return inputs.to(model.device)


def generate_answer(model: Any, processor: Any, pair: dict[str, Any], max_new_tokens: int = MAX_NEW_TOKENS,
                    sharded: bool = False) -> str:
    """The model's greedy answer to a pair's prompt."""
    import torch

    inputs = prompt_inputs(model, processor, pair)
    tokenizer = getattr(processor, "tokenizer", processor)
    with torch.no_grad(), _root_gathered(model, sharded):
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, synced_gpus=sharded)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _root_gathered(model: Any, sharded: bool) -> Any:
    """FSDP1 gathers a wrapped unit's weights in that unit's forward, but `generate` calls the model inside the root
    unit, whose own weights (embeddings, LM head, ...) stay sharded: they are gathered for the call, as TRL does for
    FSDP1 generation (`summon_full_params(recurse=False)`; the layers inside still gather their own)."""
    import contextlib

    if not sharded:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(model, recurse=False, writeback=False)


def greedy_answers(model: Any, processor: Any, pairs: Any, which: int | list[int],
                   max_new_tokens: int = MAX_NEW_TOKENS, sharded: bool = False) -> dict[str, list[str]]:
    """{"base": [...], "tuned": [...]}: greedy answers to the eval prompts `which` names (their indices, or the first
    `which`), adapter off and on.

    `sharded` (FSDP): every rank calls this with the same prompts, and each generation step runs on every rank until
    all are done (`synced_gpus`), since each step's forward gathers every layer's weights from all of them."""

    answers: dict[str, list[str]] = {"base": [], "tuned": []}
    was_training = model.training
    model.eval()
    indices = list(range(min(which, len(pairs)))) if isinstance(which, int) else which
    with progress("evaluation: answers", len(indices), "prompts") as advance:
        for pair in pairs.select(indices):
            with model.disable_adapter():
                answers["base"].append(generate_answer(model, processor, pair, max_new_tokens, sharded))
            answers["tuned"].append(generate_answer(model, processor, pair, max_new_tokens, sharded))
            advance(1)
    model.train(was_training)
    return answers


def sample_rows(pairs: Any, answers: dict[str, list[str]], count: int, run_dir: Path) -> list[dict[str, Any]]:
    """The first `count` pairs with both answers; each pair's first image saved under samples/ (its path
    relative to the run directory, or None for text)."""
    import shutil

    shutil.rmtree(run_dir / SAMPLES_DIR, ignore_errors=True)  # an earlier attempt's
    rows = []
    for i, pair in enumerate(pairs.select(range(min(count, len(answers["base"]))))):
        rows.append({"prompt": message_text(pair["prompt"]), "chosen": message_text(pair["chosen"]),
                     "rejected": message_text(pair["rejected"]), "base": answers["base"][i],
                     "tuned": answers["tuned"][i], "image": _save_image(pair, run_dir, i)})
    return rows


def _save_image(pair: dict[str, Any], run_dir: Path, index: int) -> str | None:
    return save_image(pair, run_dir, f"{SAMPLES_DIR}/{index}.jpg")


def save_image(pair: dict[str, Any], run_dir: Path, relative: str) -> str | None:
    """The pair's first image as a JPEG of at most SAMPLE_IMAGE_PX a side at `relative` under `run_dir`; returns
    `relative`, or None for a text pair."""
    images = pair.get("images") or []
    if not images:
        return None
    image = images[0].convert("RGB")
    image.thumbnail((SAMPLE_IMAGE_PX, SAMPLE_IMAGE_PX))
    (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    image.save(run_dir / relative, quality=90)
    return relative
