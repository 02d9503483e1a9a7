"""How many optimizer steps a run takes, and when it evaluates: counted as the Trainer counts them, from the settings
and the number of training pairs, before the model is loaded (the memory plan, the cost and the eval schedule)."""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("entrypoint")
EVALS_PER_RUN = 5  # evaluations during training when DPO_EVAL_STEPS is not set


def optimizer_steps(config: Any, train_pairs: int, world_size: int = 1) -> int:
    """Optimizer steps of a run as the Trainer counts them, from a DPOConfig or the job's settings (the same field
    names): DPO_MAX_STEPS when set, else the epochs over the batches each process gets, a short last batch and a
    short last accumulation counting as one."""
    if config.max_steps and config.max_steps > 0:
        return int(config.max_steps)
    batches = math.ceil(train_pairs / (config.per_device_train_batch_size * world_size))
    per_epoch = max(math.ceil(batches / config.gradient_accumulation_steps), 1)
    return math.ceil(config.num_train_epochs * per_epoch)


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
