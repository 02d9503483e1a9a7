"""DPO_ROUNDS on-policy rounds, the RLAIF-V loop: each round samples answers to every training prompt from the
current policy, judges them, pairs them and trains a DPO round on those pairs, continuing the adapter; the held-out
prompts' greedy answers are judged before round 1 and after each round.

Spot-safe: a round's drawn answers, its judged samples (answers with their scores) and its pairs are JSON lines under
`<checkpoint dir>/rounds/<r>/` (drawn.jsonl, samples.jsonl, pairs.jsonl), each renamed into place whole once made (a
pair names its prompt's row: no image is copied); an endpoint's answers and a judge's verdicts are journalled prompt
by prompt while they are made (journal.py), so a kill goes on from the next prompt. The round's training checkpoints
lie beside them (`rounds/<r>/checkpoints`), its adapter in `rounds/<r>/adapter`, and `state.json` records each
finished round. A restart reuses what a round kept and resumes its training from the newest complete checkpoint;
every round starts from the base model and the previous round's adapter as saved, so an interrupted run and an
uninterrupted one compute the same thing. Each round's DPO reference (DPO_ROUND_REFERENCE) is the policy it starts
from (TRL's frozen copy of the adapter, as in RLAIF-V's rounds) or the base model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.errors import NoTrainingData, Preempted
from entrypoint.evaluation.answers import generate_answer
from entrypoint.models.families import Family
from entrypoint.onpolicy.journal import Journal
from entrypoint.onpolicy.judge import Judge, make_judge
from entrypoint.onpolicy.pairs import make_pairs
from entrypoint.onpolicy.sample import sample_answers
from entrypoint.run import checkpoints, peers
from entrypoint.run.state import RunState

log = logging.getLogger("entrypoint.rounds")
ROUNDS_DIR = "rounds"
DRAWN, SAMPLES, PAIRS = "drawn.jsonl", "samples.jsonl", "pairs.jsonl"  # in rounds/<r>/, in the order made



@dataclass
class RoundsOutcome:
    trainer: Any  # the last round's trainer (training/trainer.py's JobDPOTrainer)
    result: Any  # its TrainOutput
    rounds: list[dict[str, Any]]  # metrics.json's "rounds"
    resumed_from: Path | None
    seconds: float


def check_round_settings(settings: JobSettings, cache_dir: Path) -> None:
    """What DPO_ROUNDS' sampler and judge need, before any model is loaded (exit 2): the endpoints' URLs, the judge
    model named and found."""
    if not settings.rounds:
        return
    from entrypoint.onpolicy.endpoint import check_endpoint_settings
    from entrypoint.planning.rounds import judge_ref

    check_endpoint_settings(settings)
    judge_ref(settings, cache_dir)


def round_dir(checkpoint_dir: Path, round_: int) -> Path:
    return checkpoint_dir / ROUNDS_DIR / str(round_)


def _as_answer(template: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` as an assistant message shaped like the data's own (`template`): string content, or text parts."""
    content = template[0]["content"]
    return [{"role": "assistant", "content": [{"type": "text", "text": text}] if isinstance(content, list) else text}]


def pairs_dataset(prompts: Any, pairs: list[dict[str, Any]]) -> Any:
    """The round's pairs as training rows: each prompt's row (its prompt and images), the sampled answers."""
    rows = prompts.select([pair["prompt"] for pair in pairs])
    if not pairs:
        return rows
    template = prompts[0]["chosen"]
    rows = rows.remove_columns(["chosen", "rejected"])
    rows = rows.add_column("chosen", [_as_answer(template, pair["chosen"]) for pair in pairs])
    return rows.add_column("rejected", [_as_answer(template, pair["rejected"]) for pair in pairs])


def journal(path: Path) -> Path:
    """Where the records of `path` are journalled while they are made: drawn.partial.jsonl for drawn.jsonl."""
    return path.with_name(f"{path.stem}.partial.jsonl")


def _kept(path: Path, make: Any, is_main: bool,
          every_rank: bool = False) -> tuple[list[dict[str, Any]], float | None]:
    """The records made once and kept in `path` (JSON lines, renamed into place whole by rank 0; or kept on an
    earlier attempt), on every rank once its copy of the checkpoint dir shows the file, and the seconds this attempt
    took to make them (None: made on an earlier one). `make` runs on rank 0, or on every rank when it is a
    collective (`every_rank`: the in-process sampler shares the prompts over the ranks), and only when rank 0 finds
    the file missing."""
    started, made = time.perf_counter(), peers.from_rank_0(not path.is_file())
    if made and (is_main or every_rank):
        records = make()
        if is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
            tmp.replace(path)
            journal(path).unlink(missing_ok=True)  # what it journalled while being made is all in `path` now
    peers.barrier()
    peers.wait_until_visible(str(path), path.is_file)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return records, round(time.perf_counter() - started, 3) if made else None


def sampled_tokens(drawn: list[dict[str, Any]]) -> int | None:
    """The tokens the in-process sampler generated in a round (None from an endpoint: its server counts them)."""
    counts = [record.get("tokens") for record in drawn]
    return sum(counts) if counts and None not in counts else None


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def heldout_score(model: Any, processor: Any, rows: Any, max_new_tokens: int, judge: Judge, is_main: bool,
                  sharded: bool = False) -> float | None:
    """The mean judge score of the policy's greedy answers to the held-out prompts (answered on every rank, judged
    on rank 0); `sharded`: the model is FSDP's, whose every forward needs every rank (evaluation/answers.py)."""
    if rows is None or not len(rows):
        return None
    was_training = model.training
    model.eval()
    answers = [[generate_answer(model, processor, row, max_new_tokens, sharded)] for row in rows]
    model.train(was_training)
    score = mean([one["score"] for [one] in judge.score(rows, answers)]) if is_main else None
    return peers.from_rank_0(score)


def run_rounds(settings: JobSettings, checkpoint_dir: Path, model_ref: Any, family: Family, processor: Any,
               data: Any, args: Any, state: RunState, is_main: bool, rank: int, world: int,
               callbacks_for: Any, on_round: Any = None) -> RoundsOutcome:
    """Every round in turn (module docstring); `callbacks_for(root, resumed_from)`: the Trainer callbacks for a round
    whose checkpoints live in `root`; `on_round(summary)`, if given, after each round this attempt runs (wandb). A
    round finished on an earlier attempt is not run again, except the last, whose trainer the evaluation after
    training needs (its training resumes at its last step: nothing is redone)."""
    from entrypoint.training.merge import free_memory

    started, done, heldout_base, outcome = time.perf_counter(), [], None, None
    judge = make_judge(settings, processor)  # loads nothing until it first scores
    for round_ in range(1, settings.rounds + 1):
        recorded = state.get(f"round-{round_}")
        if recorded and round_ < settings.rounds:
            done.append(recorded)
            heldout_base = recorded["heldout_base"]
            continue
        outcome = None  # the previous round's trainer (its model, optimizer state) goes before this round loads
        free_memory()
        *outcome, summary = _round(settings, checkpoint_dir, model_ref, family, processor, data, args, is_main, rank,
                                   world, callbacks_for, round_, heldout_base, judge)
        heldout_base = summary["heldout_base"]
        done.append(summary)
        state.mark(f"round-{round_}", summary)
        if on_round:
            on_round(summary)
        log.info("round %d: %d prompts, %d pairs, mean score of samples %.3f, held-out %s (before round 1: %s)",
                 round_, summary["prompts"], summary["pairs"], summary["mean_score"], summary["heldout_mean_score"],
                 heldout_base)
    judge.close()
    trainer, result, resumed_from = outcome
    return RoundsOutcome(trainer, result, done, resumed_from, time.perf_counter() - started)


def _round(settings: JobSettings, checkpoint_dir: Path, model_ref: Any, family: Family, processor: Any, data: Any,
           args: Any, is_main: bool, rank: int, world: int, callbacks_for: Any, round_: int,
           heldout_base: float | None, judge: Judge) -> tuple[Any, Any, Path | None, dict[str, Any]]:
    """One round: the policy (the base and the previous round's adapter, as saved), its samples, their scores and
    pairs (kept), its DPO training (resumed), its adapter, what it scored."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from entrypoint.models.loading import load_model
    from entrypoint.training.trainer import build_trainer, policy_model, use_base_as_reference

    root = round_dir(checkpoint_dir, round_)
    set_seed(settings.seed + round_)
    base = load_model(model_ref, settings.quantization, settings.distributed, processor)
    policy = policy_model(settings, base, family, args)
    previous = round_dir(checkpoint_dir, round_ - 1) / "adapter" if round_ > 1 else None
    if previous:  # the previous round's adapter, as saved: the same start after a restart as without one
        set_peft_model_state_dict(policy, load_file(previous / "adapter_model.safetensors"))  # into the fp32 weights
    if heldout_base is None:  # round 1's policy is the base (LoRA's B starts at zero)
        heldout_base = heldout_score(policy, processor, data.eval, settings.sample_max_new_tokens, judge, is_main)
    draw = partial(_draw, settings, policy, processor, data.train, round_, rank, world, root, previous)
    drawn, sampling_s = _kept(root / DRAWN, draw, is_main, every_rank=settings.sampler == "transformers")
    samples, judging_s = _kept(root / SAMPLES, partial(_judged, judge, data.train, drawn, root, round_), is_main)
    pairs, _ = _kept(root / PAIRS, partial(_pairs, settings, data.train, samples, round_), is_main)
    trained_on = pairs_dataset(data.train, pairs)
    if settings.mix_dataset_pairs:  # the dataset's own pairs beside the round's
        import datasets

        trained_on = datasets.concatenate_datasets([trained_on.cast(data.train.features), data.train]) \
            if len(trained_on) else data.train
    if not len(trained_on):
        raise NoTrainingData(
            f"round {round_}: no pairs: every prompt's samples scored the same (the log says how); a policy that "
            "cannot answer yet learns from the dataset's own pairs too (DPO_MIX_DATASET_PAIRS=true), from more "
            "samples (DPO_SAMPLES_PER_PROMPT) or a higher DPO_SAMPLE_TEMPERATURE; the round's samples are kept in "
            f"{root}: delete that folder to draw them again with new settings")
    resumed_from = checkpoints.agreed_resume_point(root / "checkpoints", is_main)
    callbacks = callbacks_for(root / "checkpoints", resumed_from)
    trainer = build_trainer(settings, policy, family, processor, trained_on, data.eval,
                            replace(args, output_dir=str(root / "checkpoints")), callbacks)
    if settings.round_reference == "base":
        use_base_as_reference(trainer.model)
    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; the job's progress lines instead
    if resumed_from:
        log.info("round %d: resuming from %s", round_, resumed_from)
    result = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    if any(getattr(callback, "preempted", False) for callback in callbacks):
        raise Preempted(f"round {round_} stopped at step {result.global_step} by SIGTERM; checkpoint saved in "
                        f"{root / 'checkpoints'}")
    trainer.save_adapter(root / "adapter")
    scores = [score for record in samples for score in record["scores"]]
    summary = {"round": round_, "prompts": len(data.train), "samples": len(scores), "pairs": len(pairs),
               "mean_score": mean(scores), "heldout_base": heldout_base,
               "sampled_tokens": sampled_tokens(drawn), "sampling_s": sampling_s, "judging_s": judging_s,
               "heldout_mean_score": heldout_score(trainer.model, processor, data.eval, settings.sample_max_new_tokens,
                                                   judge, is_main, sharded=trainer.is_fsdp_enabled),
               "global_step": result.global_step}
    return trainer, result, resumed_from, summary


def _draw(settings: JobSettings, policy: Any, processor: Any, prompts: Any, round_: int, rank: int, world: int,
          root: Path, adapter: Path | None) -> list[dict[str, Any]]:
    """DPO_SAMPLES_PER_PROMPT answers to every prompt: from the in-process policy (every rank, a share of the
    prompts each) or from an endpoint serving it (rank 0, journalled: `adapter` is the round's start)."""
    if settings.sampler == "openai":
        from entrypoint.onpolicy.endpoint import sample_from_endpoint

        drawn = sample_from_endpoint(settings, prompts, round_, adapter, Journal(journal(root / DRAWN)))
        return [{"prompt": index, "samples": group} for index, group in enumerate(drawn)]
    drawn = sample_answers(policy, processor, prompts, seed=settings.seed, round_=round_,
                           samples=settings.samples_per_prompt, temperature=settings.sample_temperature,
                           max_new_tokens=settings.sample_max_new_tokens, rank=rank, world=world)
    return [{"prompt": index, "samples": group, "tokens": tokens} for index, (group, tokens) in enumerate(drawn)]


def _judged(judge: Judge, prompts: Any, drawn: list[dict[str, Any]], root: Path, round_: int) -> list[dict[str, Any]]:
    """Every sample judged (rank 0), prompt by prompt into a journal; the scores and any verdicts beside them."""
    started = time.perf_counter()
    judged = judge.score(prompts, [record["samples"] for record in drawn], Journal(journal(root / SAMPLES)))
    log.info("round %d: %s judged %d samples in %.1f s", round_, judge.name, sum(map(len, judged)),
             time.perf_counter() - started)
    records = []
    for record, verdicts in zip(drawn, judged, strict=True):
        entry = {**record, "scores": [verdict["score"] for verdict in verdicts]}
        if any(len(verdict) > 1 for verdict in verdicts):  # a judge that says why (the model judge's claims)
            entry["verdicts"] = verdicts
        records.append(entry)
    return records


def _pairs(settings: JobSettings, prompts: Any, samples: list[dict[str, Any]], round_: int) -> list[dict[str, Any]]:
    pairing = make_pairs([r["samples"] for r in samples], [r["scores"] for r in samples], settings.pairs_per_prompt)
    reasons = ", ".join(f"{count} {why}" for why, count in pairing.unpaired.most_common()) or "none"
    log.info("round %d: %d pairs from %d prompts (length balance at %s); prompts without a pair: %s", round_,
             len(pairing.pairs), len(prompts), pairing.length_ratio, reasons)
    flat = [score for record in samples for score in record["scores"]]
    if flat and len(set(flat)) == 1:
        log.warning("round %d: the judge scored every sample %s: no preference to learn from", round_, flat[0])
    return [asdict(pair) for pair in pairing.pairs]
