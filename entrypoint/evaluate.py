"""Evaluation on the held-out pairs: does the tuned adapter beat the base model, and by how much?

"Base" is the base model: the trained model with its adapter switched off, so no second copy is
loaded. Three kinds of figures, each for base and tuned:

- preference accuracy by the model's own likelihood: the share of pairs whose chosen answer gets a
  higher mean log-probability per token than the rejected one, and the mean gap. Unlike DPO's
  rewards it means something for the base model too;
- task accuracy where the data holds the right answer (`Format.ground_truth`, e.g. VQA-RAD):
  yes/no questions by exact match of the greedy answer's yes or no, open questions by token F1;
- DPO's reward metrics from `trainer.evaluate()`. At step 0 the policy is the reference, so the
  base's rewards are 0 and its loss ln 2 by construction: labelled as such wherever they are shown.
"""

from __future__ import annotations

import contextlib
import logging
import math
import string
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.data.formats import message_text
from entrypoint.outputs import SAMPLES_DIR
from entrypoint.train import optimizer_steps

log = logging.getLogger("entrypoint")
MAX_NEW_TOKENS = 64
EVALS_PER_RUN = 5  # evaluations during training when DPO_EVAL_STEPS is not set
SAMPLE_IMAGE_PX = 512  # longest side of a saved sample image
MISSING = "—"  # where a figure has no value (the card, the log, report.html)
STEP0_NOTE = "base: at step 0 the policy is the reference, so rewards are 0 and the loss ln 2 by construction"


# ---- when to evaluate

def eval_schedule(settings: Any, args: Any, train_pairs: int, eval_pairs: int, world_size: int = 1) -> int | None:
    """Evaluate during training every N steps: DPO_EVAL_STEPS when set, else about EVALS_PER_RUN times a run.

    Sets `args.eval_strategy`/`args.eval_steps` (DPOConfig) and returns N, or None when there is no eval
    split or the user chose DPO_EVAL_STRATEGY themselves."""
    if not eval_pairs or "eval_strategy" in settings.model_fields_set:
        return None
    steps = optimizer_steps(args, train_pairs, world_size)
    chosen = settings.eval_steps if "eval_steps" in settings.model_fields_set and settings.eval_steps else None
    if chosen is None:
        every = max(1, math.ceil(steps / EVALS_PER_RUN))
    else:  # below 1: a fraction of the run, as transformers reads it
        every = max(1, math.ceil(chosen * steps) if chosen < 1 else int(chosen))
    args.eval_strategy, args.eval_steps = "steps", every
    return every


def log_eval_cost(before: dict[str, float], args: Any, report: dict[str, Any], every: int | None,
                  world_size: int = 1) -> None:
    """What evaluation adds to the run, from the time the evaluation before training took."""
    if not before.get("runtime"):
        return
    evals = optimizer_steps(args, report["train_pairs"], world_size) // every if every else 0
    log.info("evaluation: %.1f s each on %d pairs (DPO_MAX_EVAL_PAIRS); every %s steps (DPO_EVAL_STEPS): %d during "
             "training and one after, about %.0f s in all", before["runtime"], report["eval_pairs"], every or "-",
             evals, (evals + 1) * before["runtime"])


# ---- DPO reward metrics (TRL)

def reward_metrics(trainer: Any) -> dict[str, float]:
    """trainer.evaluate() on the eval pairs, with the `eval_` prefix dropped."""
    if trainer.eval_dataset is None:
        return {}
    return _unprefixed(trainer.evaluate())


def final_reward_metrics(trainer: Any) -> dict[str, float]:
    """The evaluation the schedule ran at the last step, else a new one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return _unprefixed({k: v for k, v in last.items() if k != "step"})
    return reward_metrics(trainer)


def with_step0(before: dict[str, float], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trainer's log history with the evaluation before training as its first point (the trainer starts a
    new history when training starts), so that the eval curves begin where the base model stands."""
    if not before:
        return history
    return [{**{f"eval_{key}": value for key, value in before.items()}, "step": 0}, *history]


def _unprefixed(metrics: dict[str, Any]) -> dict[str, float]:
    return {key.removeprefix("eval_"): float(value) for key, value in metrics.items()
            if isinstance(value, int | float)}


# ---- preference accuracy by likelihood

@dataclass(frozen=True)
class Preference:
    """Per pair: the mean log-probability a token of the chosen and of the rejected answer."""

    chosen: list[float]
    rejected: list[float]

    def summary(self) -> dict[str, float | int]:
        gaps = [c - r for c, r in zip(self.chosen, self.rejected, strict=True)]
        n = len(gaps)
        return {"accuracy": sum(g > 0 for g in gaps) / n if n else float("nan"),
                "mean_gap": sum(gaps) / n if n else float("nan"), "pairs": n}


def likelihood_preference(trainer: Any) -> dict[str, dict[str, float | int]]:
    """{"base": summary, "tuned": summary} on the eval pairs, in one pass over TRL's eval batches.

    Every rank takes part (the batches are sharded); the summaries are over all pairs."""
    import torch

    from entrypoint.logs import progress

    model = trainer.model
    unwrapped = trainer.accelerator.unwrap_model(model)
    loader = trainer.get_eval_dataloader()
    was_training = model.training
    model.eval()
    per_model: dict[str, list[torch.Tensor]] = {"base": [], "tuned": []}
    with torch.no_grad(), progress("evaluation: likelihoods", len(loader), "batches") as advance:
        for batch in loader:
            inputs = trainer._prepare_inputs(batch)
            for name, adapter in (("base", unwrapped.disable_adapter()), ("tuned", contextlib.nullcontext())):
                with adapter, trainer.accelerator.autocast():
                    per_model[name].append(trainer.accelerator.gather_for_metrics(
                        _mean_token_logps(model, inputs)))
            advance(1)
    model.train(was_training)
    out = {}
    for name, parts in per_model.items():
        pairs = torch.cat(parts).float().cpu() if parts else torch.empty(0, 2)
        out[name] = Preference(pairs[:, 0].tolist(), pairs[:, 1].tolist()).summary()
    return out


def _mean_token_logps(model: Any, inputs: dict[str, Any]) -> Any:
    """(pairs, 2): the mean log-probability a completion token, chosen then rejected, from a TRL batch
    (chosen sequences first, then rejected; `completion_mask` marks the answer tokens)."""
    import torch

    completion_mask = inputs["completion_mask"]
    kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    mask = completion_mask[..., 1:].to(torch.float32)
    logps = model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True).log_probs[:, -mask.size(1):]
    mean = (logps.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    chosen, rejected = mean.chunk(2, dim=0)
    return torch.stack([chosen, rejected], dim=1)


# ---- task accuracy against the data's own answers

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

def _generate(model: Any, processor: Any, pair: dict[str, Any], max_new_tokens: int) -> str:
    import torch

    prompt = processor.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
    images = pair.get("images")
    inputs = processor(text=prompt, images=images, return_tensors="pt") if images else processor(
        prompt, return_tensors="pt")
    inputs = inputs.to(model.device)
    tokenizer = getattr(processor, "tokenizer", processor)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def greedy_answers(model: Any, processor: Any, pairs: Any, count: int,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, list[str]]:
    """{"base": [...], "tuned": [...]}: greedy answers to the first `count` eval prompts, adapter off and on."""
    from entrypoint.logs import progress

    answers: dict[str, list[str]] = {"base": [], "tuned": []}
    was_training = model.training
    model.eval()
    count = min(count, len(pairs))
    with progress("evaluation: answers", count, "prompts") as advance:
        for pair in pairs.select(range(count)):
            with model.disable_adapter():
                answers["base"].append(_generate(model, processor, pair, max_new_tokens))
            answers["tuned"].append(_generate(model, processor, pair, max_new_tokens))
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
    images = pair.get("images") or []
    if not images:
        return None
    image = images[0].convert("RGB")
    image.thumbnail((SAMPLE_IMAGE_PX, SAMPLE_IMAGE_PX))
    relative = f"{SAMPLES_DIR}/{index}.jpg"
    (run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    image.save(run_dir / relative, quality=90)
    return relative


# ---- the whole evaluation after training

def evaluate_trained(trainer: Any, processor: Any, pairs: Any, *, before: dict[str, float], ground_truth: bool,
                     generations: int, run_dir: Path, is_main: bool) -> dict[str, Any]:
    """metrics.json's evaluation keys (rank 0; {} on the others, which take part in the likelihood pass):
    eval_after (DPO rewards), evaluation (likelihood and task figures), comparison, samples (images saved)."""
    if pairs is None:
        return {"eval_after": {}, "evaluation": {}, "comparison": [], "samples": []}
    after = final_reward_metrics(trainer)
    evaluation = base_and_tuned(trainer, processor, pairs, ground_truth=ground_truth, generations=generations,
                                is_main=is_main)
    if not is_main:
        return {}
    answers = evaluation.pop("answers")
    return {"eval_after": after, "evaluation": evaluation, "comparison": comparison(evaluation, before, after),
            "samples": sample_rows(pairs, answers, generations, run_dir)}


def base_and_tuned(trainer: Any, processor: Any, pairs: Any, *, ground_truth: bool, generations: int,
                   is_main: bool) -> dict[str, Any]:
    """Likelihood preference (every rank), then on rank 0 the greedy answers: all eval prompts when the data
    has right answers (task accuracy), else the `generations` shown as samples. Times each part."""
    started = time.perf_counter()
    preference = likelihood_preference(trainer)
    seconds = {"likelihood": time.perf_counter() - started}
    result: dict[str, Any] = {"pairs": len(pairs), "preference": preference}
    if not is_main:
        return result
    wanted = len(pairs) if ground_truth else generations
    started = time.perf_counter()
    answers = greedy_answers(trainer.model, processor, pairs, wanted) if wanted else {"base": [], "tuned": []}
    seconds["answers"] = time.perf_counter() - started
    if ground_truth:
        references = [message_text(pair["chosen"]) for pair in pairs.select(range(len(answers["base"])))]
        result["task"] = task_accuracy(references, answers)
    result.update(answers=answers, seconds=seconds)
    log.info("evaluation of base and tuned: likelihoods of %d pairs %.1f s, %d greedy answers %.1f s",
             len(pairs), seconds["likelihood"], len(answers["base"]), seconds["answers"])
    return result


def comparison(evaluation: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> list[dict[str, Any]]:
    """The before/after table (metrics.json "comparison"; card, report, wandb and the log's summary show it)."""
    rows: list[dict[str, Any]] = []
    preference = evaluation.get("preference") or {}
    if preference:
        base, tuned = preference["base"], preference["tuned"]
        rows += [
            _row("preference accuracy (likelihood)", base["accuracy"], tuned["accuracy"], base["pairs"],
                 "share of pairs whose chosen answer has the higher mean log-probability a token"),
            _row("likelihood gap, chosen - rejected", base["mean_gap"], tuned["mean_gap"], base["pairs"],
                 "mean log-probability a token (nats)"),
        ]
    task = evaluation.get("task") or {}
    if "closed" in task:
        rows.append(_row("yes/no questions: exact match", task["closed"]["base"], task["closed"]["tuned"],
                         task["closed"]["questions"], "the greedy answer's yes or no against the reference"))
    if "open" in task:
        rows.append(_row("open questions: token F1", task["open"]["base"], task["open"]["tuned"],
                         task["open"]["questions"], "greedy answer against the reference answer"))
    for key, label in (("rewards/accuracies", "DPO reward accuracy"), ("rewards/margins", "DPO reward margin"),
                       ("loss", "DPO loss")):
        if key in after:
            rows.append(_row(label, before.get(key), after[key], evaluation.get("pairs"), STEP0_NOTE))
    return rows


def _row(metric: str, base: float | None, tuned: float | None, count: int | None, note: str) -> dict[str, Any]:
    return {"metric": metric, "base": base, "tuned": tuned, "count": count, "note": note}


def number(value: float | None) -> str:
    """A figure of the comparison as the log and the card show it (a dash where there is none)."""
    return MISSING if value is None else f"{value:.4f}"


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table as text lines for the log."""
    return [f"  {row['metric']}: base {number(row['base'])} -> tuned {number(row['tuned'])}"
            + (f" ({row['count']})" if row["count"] else "") for row in rows if not row["metric"].startswith("DPO")]

