"""Yes/no questions, base and tuned: POPE's object-hallucination figures, and VQA-RAD's closed questions.

The model's answer to a question is the more probable of its "yes" and its "no" tokens as the next token after the
prompt (the chat template's generation prompt included): one forward a question, batched, no sampling, so a model
that would start its answer with "Sure, ..." is still scored and the figures do not depend on parsing free text.
"yes" and "no" are every first token of the words' usual spellings (`yes`, `Yes`, `YES`, with and without a leading
space) that is a start of the word; their probabilities are summed. The answer is "yes" when P(yes) > P(no).

Figures as POPE reports them, "yes" the positive class: accuracy, precision, recall, F1 and the share of questions
answered "yes" (a model that says yes to everything has recall 1, precision the share of yes in the set, yes share
1), overall and for each `category` of the set (POPE's adversarial, popular, random).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from entrypoint.evaluation.answers import normalize_answer
from entrypoint.logs import progress

log = logging.getLogger("entrypoint")

SPELLINGS = {"yes": ("yes", "Yes", "YES", " yes", " Yes", " YES"), "no": ("no", "No", "NO", " no", " No", " NO")}
SCORING = ("the more probable of the model's yes and no tokens as the next token after the prompt (one forward a "
           "question, batched, no sampling), against the reference answer; yes is the positive class")
FIGURES = ("accuracy", "precision", "recall", "f1", "yes_ratio")  # POPE's, in its order


@dataclass(frozen=True)
class AnswerTokens:
    """The token ids whose probabilities make P(yes) and P(no), and how they read."""

    yes: tuple[int, ...]
    no: tuple[int, ...]
    shown: dict[str, list[str]]


def answer_tokens(tokenizer: Any) -> AnswerTokens:
    """Every first token of a spelling of yes (no) that is a start of the word, less any token both share."""
    found: dict[str, dict[int, str]] = {}
    for word, spellings in SPELLINGS.items():
        found[word] = {}
        for spelling in spellings:
            ids = tokenizer.encode(spelling, add_special_tokens=False)
            text = tokenizer.decode(ids[:1]).strip().lower() if ids else ""
            if text and word.startswith(text):
                found[word][ids[0]] = tokenizer.convert_ids_to_tokens(ids[0])
    both = set(found["yes"]) & set(found["no"])
    yes, no = (tuple(sorted(set(found[w]) - both)) for w in ("yes", "no"))
    if not yes or not no:
        raise RuntimeError(f"the tokenizer has no token that starts yes and not no (or the other way round): {found}")
    return AnswerTokens(yes, no, {w: [found[w][i] for i in ids] for w, ids in (("yes", yes), ("no", no))})


# ---- the model's P(yes) against P(no)

def question_inputs(processor: Any, rows: list[dict[str, Any]]) -> Any:
    """One batch, padded on the right: every question's own tokens at positions 0..n-1, exactly as unbatched."""
    prompts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
               for row in rows]
    tokenizer = getattr(processor, "tokenizer", processor)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        if rows and rows[0].get("images"):
            return processor(text=prompts, images=[row["images"] for row in rows], padding=True, return_tensors="pt")
        return processor(prompts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side


def yes_margin(model: Any, inputs: Any, tokens: AnswerTokens) -> Any:
    """log P(yes) - log P(no) for each question, from the logits at its last prompt token."""
    import torch

    last = inputs["attention_mask"].sum(dim=-1) - 1
    positions = torch.unique(last)  # sorted; the LM head runs on these positions only
    logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits
    logits = logits[torch.arange(len(last), device=logits.device), torch.searchsorted(positions, last)].float()
    # log P(yes) - log P(no): the softmax's normaliser is the same for both, so it cancels
    return torch.logsumexp(logits[:, list(tokens.yes)], dim=-1) - torch.logsumexp(logits[:, list(tokens.no)], dim=-1)


def yes_margins(model: Any, processor: Any, pairs: Any, batch_size: int,
                autocast: Callable[[], Any] = contextlib.nullcontext,
                tokens: AnswerTokens | None = None) -> dict[str, list[float]]:
    """{"base": [...], "tuned": [...]}: log P(yes) - log P(no) for each pair's prompt, adapter off and on (each batch
    prepared once for both); `tokens`: the processor's answer tokens, when the caller has them."""
    import torch

    tokens = tokens or answer_tokens(getattr(processor, "tokenizer", processor))
    margins: dict[str, list[float]] = {"base": [], "tuned": []}
    was_training = model.training
    model.eval()
    with torch.no_grad(), progress("evaluation: yes/no questions", len(pairs), "questions") as advance:
        for start in range(0, len(pairs), batch_size):
            rows = list(pairs.select(range(start, min(start + batch_size, len(pairs)))))  # images decoded
            inputs = question_inputs(processor, rows).to(model.device)
            for name, adapter in (("base", model.disable_adapter()), ("tuned", contextlib.nullcontext())):
                with adapter, autocast():
                    margins[name] += yes_margin(model, inputs, tokens).cpu().tolist()
            advance(len(rows))
    model.train(was_training)
    return margins


# ---- POPE's figures

def is_yes(reference: str) -> bool:
    return normalize_answer(reference) == "yes"


def yes_no_figures(references: Sequence[str], said_yes: Sequence[bool]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and yes share with "yes" positive, and the counts they come from. A figure
    whose denominator is 0 (precision when nothing was answered yes) is None."""
    truth = [is_yes(reference) for reference in references]
    tp = sum(t and p for t, p in zip(truth, said_yes, strict=True))
    fp = sum(p and not t for t, p in zip(truth, said_yes, strict=True))
    fn = sum(t and not p for t, p in zip(truth, said_yes, strict=True))
    tn = len(truth) - tp - fp - fn
    n = len(truth)

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {"questions": n, "accuracy": share(tp + tn, n), "precision": share(tp, tp + fp),
            "recall": share(tp, tp + fn), "f1": share(2 * tp, 2 * tp + fp + fn), "yes_ratio": share(tp + fp, n),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def yes_no_report(references: Sequence[str], categories: Sequence[str], margins: dict[str, list[float]],
                  tokens: AnswerTokens | None = None) -> dict[str, Any]:
    """metrics.json's "yes_no": base and tuned overall, and by category where the set has them."""
    said = {name: [margin > 0 for margin in values] for name, values in margins.items()}
    report: dict[str, Any] = {"questions": len(references), "scoring": SCORING,
                              **({"tokens": tokens.shown} if tokens else {}),
                              **{name: yes_no_figures(references, answers) for name, answers in said.items()}}
    names = sorted({category for category in categories if category})
    report["categories"] = {
        category: {"questions": sum(c == category for c in categories), **{
            name: yes_no_figures([r for r, c in zip(references, categories, strict=True) if c == category],
                                 [a for a, c in zip(answers, categories, strict=True) if c == category])
            for name, answers in said.items()}} for category in names}
    return report


def evaluate_yes_no(model: Any, processor: Any, pairs: Any, references: Sequence[str], batch_size: int,
                    autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, Any]:
    """The yes/no questions scored, base and tuned, on the whole set (rank 0; under FSDP every rank, on the same
    set, as each forward gathers the weights from all of them)."""
    categories = pairs["category"] if "category" in pairs.column_names else [""] * len(pairs)
    tokens = answer_tokens(getattr(processor, "tokenizer", processor))
    margins = yes_margins(model, processor, pairs, batch_size, autocast, tokens)
    return yes_no_report(references, categories, margins, tokens)
