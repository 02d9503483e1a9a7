"""Judges (DPO_JUDGE): a score for each sampled answer, higher better, and for some why.

- `ground-truth`: the row's reference answer (VQA-RAD's answer, a QA set's answer column): 1 or 0 for a yes/no
  question (the answer's first word, as the evaluation scores closed questions), token F1 otherwise (SQuAD's, as the
  evaluation scores open ones);
- `model` (claims.py): RLAIF-V's divide and conquer with a judge model the job loads;
- `openai` (endpoint.py): an OpenAI-compatible chat endpoint.

A judge's `score(rows, samples, journal)` gives, for each row, one verdict a sample: `{"score": float, ...}` (the
model judge adds each claim's verdict). With a `journal` (journal.py) it records each row's verdicts as it makes
them and skips the rows an earlier attempt recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from entrypoint.config.settings import JobSettings
from entrypoint.data.formats import message_text
from entrypoint.evaluation.answers import closed_correct, is_closed, token_f1
from entrypoint.onpolicy.journal import Journal

Verdict = dict[str, Any]  # {"score": float, ...}


class Judge(Protocol):
    name: str

    def score(self, rows: Any, samples: Sequence[Sequence[str]],
              journal: Journal | None = None) -> list[list[Verdict]]: ...

    def close(self) -> None: ...


def references(rows: Any) -> list[str]:
    """Each row's right answer: the chosen answer of a format that holds it (vqa-rad)."""
    return [message_text(chosen) for chosen in rows["chosen"]]


def ground_truth_score(sample: str, reference: str) -> float:
    """One sample against its prompt's reference answer, in [0, 1]."""
    if is_closed(reference):
        return float(closed_correct(sample, reference))
    return token_f1(sample, reference)


def ground_truth_scores(samples: Sequence[Sequence[str]], references: Sequence[str]) -> list[list[float]]:
    """Scores a prompt, for every prompt's samples."""
    return [[ground_truth_score(sample, reference) for sample in group]
            for group, reference in zip(samples, references, strict=True)]


class GroundTruthJudge:
    name = "ground-truth"

    def score(self, rows: Any, samples: Sequence[Sequence[str]],
              journal: Journal | None = None) -> list[list[Verdict]]:
        scores = ground_truth_scores(samples, references(rows))  # instant: nothing worth journalling
        return [[{"score": score} for score in group] for group in scores]

    def close(self) -> None:
        pass


def make_judge(settings: JobSettings, processor: Any) -> Judge:
    """DPO_JUDGE's judge; a model or a client is made when it first scores, not here."""
    if settings.judge == "model":
        from entrypoint.onpolicy.claims import ModelJudge

        return ModelJudge(settings, processor)
    if settings.judge == "openai":
        from entrypoint.onpolicy.endpoint import EndpointJudge

        return EndpointJudge(settings)
    return GroundTruthJudge()
