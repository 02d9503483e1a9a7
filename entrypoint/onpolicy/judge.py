"""Judges: a score for each sampled answer. `ground-truth` (DPO_JUDGE): the row's reference answer (VQA-RAD's answer,
a QA set's answer column): 1 or 0 for a yes/no question (the answer's first word, as the evaluation scores
closed questions), token F1 otherwise (SQuAD's, as the evaluation scores open ones)."""

from __future__ import annotations

from collections.abc import Sequence

from entrypoint.evaluation.answers import closed_correct, is_closed, token_f1


def ground_truth_score(sample: str, reference: str) -> float:
    """One sample against its prompt's reference answer, in [0, 1]."""
    if is_closed(reference):
        return float(closed_correct(sample, reference))
    return token_f1(sample, reference)


def ground_truth_scores(samples: Sequence[Sequence[str]], references: Sequence[str]) -> list[list[float]]:
    """Scores a prompt, for every prompt's samples."""
    return [[ground_truth_score(sample, reference) for sample in group]
            for group, reference in zip(samples, references, strict=True)]
