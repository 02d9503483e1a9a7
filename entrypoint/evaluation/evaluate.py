"""Evaluation on the eval pairs (a grouped split, or DPO_EVAL_DATASET): does the tuned adapter beat the base
model, and by how much?

"Base" is the base model: the trained model with its adapter switched off, so no second copy is
loaded. Four kinds of figures, each for base and tuned:

- preference accuracy by the model's own likelihood: the share of pairs whose chosen answer gets a
  higher mean log-probability per token than the rejected one, and the mean gap. Unlike DPO's
  rewards it means something for the base model too;
- yes/no questions where the data holds the right answer (`Format.ground_truth`: POPE, VQA-RAD's closed
  questions): the more probable of the model's yes and no tokens after the prompt, scored as POPE is
  (accuracy, precision, recall, F1, yes share, by category; yes_no.py);
- task accuracy of the other questions with a right answer: token F1 of the greedy answer (answers.py);
- DPO's reward metrics from `trainer.evaluate()`. At step 0 the policy is the reference, so the
  base's rewards are 0 and its loss ln 2 by construction: labelled as such wherever they are shown.

The before/after table is comparison.py's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.data.formats import message_text
from entrypoint.evaluation.answers import greedy_answers, is_closed, sample_rows, task_accuracy
from entrypoint.evaluation.comparison import comparison, yes_no_lines
from entrypoint.evaluation.yes_no import evaluate_yes_no
from entrypoint.logs import progress

log = logging.getLogger("entrypoint")


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


# ---- the whole evaluation after training

def _task(references: list[str], open_: list[int], answered: dict[int, tuple[str, str]],
          yes_no: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's evaluation "task": token F1 of the open questions' greedy answers (`answered`: index -> (base,
    tuned)), and the yes/no accuracy where it has always been ("closed"; scored by the yes and no tokens now)."""
    task = task_accuracy([references[i] for i in open_], {name: [answered[i][k] for i in open_]
                                                          for k, name in enumerate(("base", "tuned"))})
    if yes_no:
        task["closed"] = {"questions": yes_no["questions"], "base": yes_no["base"]["accuracy"],
                          "tuned": yes_no["tuned"]["accuracy"]}
    return task


def evaluate_trained(trainer: Any, processor: Any, pairs: Any, *, before: dict[str, float], ground_truth: bool,
                     generations: int, run_dir: Path, is_main: bool) -> dict[str, Any]:
    """metrics.json's evaluation keys (rank 0; {} on the others, which take part in the likelihood pass):
    eval_after (DPO rewards), evaluation (likelihood and task figures), yes_no (POPE's figures, by category),
    comparison, samples (images saved)."""
    if pairs is None:
        return {"eval_after": {}, "evaluation": {}, "yes_no": {}, "comparison": [], "samples": []}
    after = final_reward_metrics(trainer)
    evaluation = base_and_tuned(trainer, processor, pairs, ground_truth=ground_truth, generations=generations,
                                is_main=is_main)
    if not is_main:
        return {}
    answers, yes_no = evaluation.pop("answers"), evaluation.pop("yes_no")
    return {"eval_after": after, "evaluation": evaluation, "yes_no": yes_no,
            "comparison": comparison(evaluation, before, after, yes_no),
            "samples": sample_rows(pairs, answers, generations, run_dir)}


def base_and_tuned(trainer: Any, processor: Any, pairs: Any, *, ground_truth: bool, generations: int,
                   is_main: bool) -> dict[str, Any]:
    """Likelihood preference (every rank), then, where the data has right answers, the yes/no questions by their yes
    and no tokens and the other questions by greedy answers (task accuracy); greedy answers to the first
    `generations` prompts either way, shown as samples. Times each part.

    The yes/no questions and the answers run on rank 0 alone, unless the model is sharded (FSDP,
    `trainer.is_fsdp_enabled`): there every forward gathers each layer's weights from every rank, so every rank runs
    them, on the same prompts, and rank 0 keeps the results (`sharded`)."""
    started = time.perf_counter()
    preference = likelihood_preference(trainer)
    seconds = {"likelihood": time.perf_counter() - started}
    result: dict[str, Any] = {"pairs": len(pairs), "preference": preference, "yes_no": {}}
    sharded = trainer.is_fsdp_enabled  # transformers: accelerate runs FSDP
    if not is_main and not sharded:
        return result
    references = [message_text(chosen) for chosen in pairs["chosen"]] if ground_truth else []  # no image decoded
    closed = [i for i, reference in enumerate(references) if is_closed(reference)]
    open_ = [i for i, reference in enumerate(references) if not is_closed(reference)]
    if closed:
        started = time.perf_counter()
        result["yes_no"] = evaluate_yes_no(trainer.model, processor, pairs.select(closed),
                                           [references[i] for i in closed],
                                           2 * trainer.args.per_device_eval_batch_size, trainer.accelerator.autocast)
        seconds["yes_no"] = time.perf_counter() - started
        for line in yes_no_lines(result["yes_no"]) if is_main else ():
            log.info("evaluation: %s", line)
    # The samples first (the first `generations` prompts), then every open question not among them, in order.
    wanted = sorted(set(range(min(generations, len(pairs)))) | set(open_))
    started = time.perf_counter()
    answers = greedy_answers(trainer.model, processor, pairs, wanted, sharded=sharded) if wanted else {
        "base": [], "tuned": []}
    seconds["answers"] = time.perf_counter() - started
    if not is_main:  # a sharded model's other ranks took part; rank 0 keeps the results
        return result
    if ground_truth:
        answered = dict(zip(wanted, zip(answers["base"], answers["tuned"], strict=True), strict=True))
        result["task"] = _task(references, open_, answered, result["yes_no"])
    result.update(answers=answers, seconds=seconds)
    yes_no = f", {len(closed)} yes/no questions {seconds['yes_no']:.1f} s" if closed else ""
    log.info("evaluation of base and tuned: likelihoods of %d pairs %.1f s%s, %d greedy answers %.1f s", len(pairs),
             seconds["likelihood"], yes_no, len(answers["base"]), seconds["answers"])
    return result
