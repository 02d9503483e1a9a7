"""The model judge (DPO_JUDGE=model): RLAIF-V's divide and conquer (Yu et al., "RLAIF-V", 2024; github
RLHF-V/RLAIF-V) with a judge vision-language model the job loads (DPO_JUDGE_MODEL).

RLAIF-V, step by step, and what this module does in its place:
1. Divide: an LLM (a Llama-3-8B tuned for it) rewrites each sampled answer into self-contained facts, with the prompt
   in `utils/llama3_8b_inference.py` (`wrap_prompt_divide_to_list`: "You are an expert in extracting facts from the
   given question-answer pair for an image..."); a second LLM turns each fact into a general question
   (`wrap_prompt_changeq_to_list`), to which `construct_question_yesno` appends "Please answer yes or no."
   Here `split_claims` cuts the answer into sentences and coordinated clauses instead, deterministically and without
   a model, and `claim_question` asks about each claim as it stands, with the prompt's question beside it for the
   context the LLM's rewrite would have put into the fact.
2. Conquer: the judge VLM (OmniLMM-12B or MiniCPM-Llama3-V 2.5) answers each question about the image; its
   next-token probabilities of yes+Yes and no+No are kept (`omnilmm/omnilmm_gen_data.py --is_yesno`,
   `minicpm-llama3-v-25/minicpmv_autocheck.py`), and a claim is judged true when P(yes) > P(no)
   (`utils/pair_construction.py`, `pred_scores_to_class`). Here the same comparison, from the job's own yes/no
   scoring (evaluation/yes_no.py: every first token of yes and no, one batched forward a question); a claim's
   `p_yes` is P(yes) / (P(yes) + P(no)).
3. Score: the number of claims judged true minus the number of claims, i.e. minus the claims judged false
   (`utils/pair_construction.py`, `get_pred_ans_scores`). No secondary value breaks ties: RLAIF-V pairs two answers
   only when their scores differ by at least 1 (`pair_data_judge`, diff=1), and pairs.py never pairs equal scores.
   An empty answer has no claim, so nothing of it is false (score 0); it is never paired (pairs.py drops empty
   answers), as in RLAIF-V, where an answer without facts asks no question and so never reaches a pair.

The judge is a separate copy of its model (even when it is DPO_MODEL), loaded at the first `score` with the job's
own loaders, in DPO_QUANTIZATION, whole on rank 0's device (only rank 0 judges); `close` frees it.
"""

from __future__ import annotations

import gc
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.data.formats import message_text
from entrypoint.evaluation.yes_no import AnswerTokens, answer_tokens, question_inputs, yes_margin
from entrypoint.logs import progress
from entrypoint.onpolicy.journal import Journal

log = logging.getLogger("entrypoint")

Verdict = dict[str, Any]  # {"score": float, "claims": [{"claim", "question", "p_yes", "true"}, ...]}

MIN_CLAIM_WORDS = 3  # a clause shorter than this stays with its neighbour: "a dog" is not a claim on its own
QUESTION = 'Is the following statement about the image true? "{claim}" Please answer yes or no.'
ASKED = 'The question was: "{prompt}"\n'  # before QUESTION when the prompt has text
# A list marker at the start of a line or after a sentence's end ("1. ", "- "): not part of any claim.
_MARKER = re.compile(r"(^|[.!?:]\s+)(?:[-*\u2022]|\d+[.)])\s+(?=\S)", re.MULTILINE)
# A sentence ends at . ! ? followed by a space and a capital or a digit ("3.5 cm" and "e.g. the" do not end one),
# or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\s*\n\s*")
# Where coordinated clauses meet: a semicolon, or a comma before and / but / while / whereas.
_CLAUSE_JOIN = re.compile(r"(;\s+|,\s+(?:and|but|while|whereas)\s+)", re.IGNORECASE)


# ---- divide: claims and their questions

def split_claims(answer: str) -> list[str]:
    """The answer's atomic claims, in order: its sentences, each cut where coordinated clauses meet ("..., and ...",
    "...; ..."), clauses of fewer than MIN_CLAIM_WORDS words kept with their neighbour, list markers and the final
    punctuation dropped.

    A deterministic stand-in for RLAIF-V's LLM splitter (the fact-extraction prompt of `wrap_prompt_divide_to_list`
    in RLHF-V/RLAIF-V's `utils/llama3_8b_inference.py`): no model, the same claims for the same answer on any run.
    It does not rewrite a claim to stand alone ("It is on the left" stays so) nor drop opinions; an abbreviation
    with a period before a capital ("Dr. Smith") ends a sentence. An empty answer has no claim; any other answer
    has at least one."""
    text = _MARKER.sub(r"\1", answer.strip())
    claims = [claim for sentence in _SENTENCE_END.split(text) for claim in _clauses(sentence)]
    claims = [claim for claim in claims if any(ch.isalnum() for ch in claim)]
    return claims or ([answer.strip()] if answer.strip() else [])


def _clauses(sentence: str) -> list[str]:
    """A sentence cut at each clause join whose both sides have MIN_CLAIM_WORDS words or more."""
    parts = _CLAUSE_JOIN.split(sentence.strip())
    clauses, current = [], parts[0]
    for join, following in zip(parts[1::2], parts[2::2], strict=True):
        if _words(current) >= MIN_CLAIM_WORDS and _words(following) >= MIN_CLAIM_WORDS:
            clauses.append(current)
            current = following
        else:
            current += join + following
    return [clause.strip().rstrip(" .,;:!").strip() for clause in [*clauses, current] if clause.strip()]


def _words(text: str) -> int:
    return len(text.split())


def claim_question(claim: str, prompt_text: str) -> str:
    """The yes/no question the judge answers about the image: RLAIF-V's "... Please answer yes or no." suffix
    (`construct_question_yesno`), about the claim as stated, after the prompt's question when it has one (the
    context RLAIF-V's rewrite into a self-contained fact would give)."""
    asked = ASKED.format(prompt=" ".join(prompt_text.split())) if prompt_text.strip() else ""
    return asked + QUESTION.format(claim=claim)


def question_row(question: str, images: Sequence[Any] | None) -> dict[str, Any]:
    """A question about the row's images as evaluation/yes_no.py's batches take it: a user turn, images first."""
    if not images:
        return {"prompt": [{"role": "user", "content": question}], "images": []}
    parts = [*({"type": "image", "text": None} for _ in images), {"type": "text", "text": question}]
    return {"prompt": [{"role": "user", "content": parts}], "images": list(images)}


# ---- conquer: the judge's yes and no

def claim_margins(model: Any, processor: Any, questions: Sequence[dict[str, Any]], batch_size: int,
                  tokens: AnswerTokens) -> list[float]:
    """log P(yes) - log P(no) of the judge's next token after each question (rows of `question_row`), in batches of
    `batch_size`, by evaluation/yes_no.py's scoring."""
    import torch

    margins: list[float] = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            inputs = question_inputs(processor, list(questions[start:start + batch_size])).to(model.device)
            margins += yes_margin(model, inputs, tokens).cpu().tolist()
    return margins


def verdict(claims: Sequence[str], questions: Sequence[str], margins: Sequence[float]) -> Verdict:
    """An answer's verdict: each claim true when P(yes) > P(no) (RLAIF-V's `pred_scores_to_class`), its `p_yes`
    P(yes) / (P(yes) + P(no)), the margin's sigmoid; the score, minus the number of claims judged false
    (`get_pred_ans_scores`: true claims minus all claims)."""
    judged = [{"claim": claim, "question": question, "p_yes": 1 / (1 + math.exp(-margin)), "true": margin > 0}
              for claim, question, margin in zip(claims, questions, margins, strict=True)]
    return {"score": float(-sum(not claim["true"] for claim in judged)), "claims": judged}


def judge_answers(model: Any, processor: Any, row: dict[str, Any], answers: Sequence[str], batch_size: int,
                  tokens: AnswerTokens) -> list[Verdict]:
    """One row's answers judged: every claim of every answer asked about the row's images, batched together."""
    prompt_text = message_text(row["prompt"])
    claims = [split_claims(answer) for answer in answers]
    questions = [[claim_question(claim, prompt_text) for claim in group] for group in claims]
    asked = [question_row(question, row.get("images")) for group in questions for question in group]
    margins = claim_margins(model, processor, asked, batch_size, tokens) if asked else []
    verdicts, start = [], 0
    for group, group_questions in zip(claims, questions, strict=True):
        verdicts.append(verdict(group, group_questions, margins[start:start + len(group)]))
        start += len(group)
    return verdicts


# ---- the judge

class ModelJudge:
    """RLAIF-V's divide-and-conquer judge on DPO_JUDGE_MODEL; the model is loaded at the first `score`."""

    name = "model"

    def __init__(self, settings: JobSettings, processor: Any) -> None:
        self.settings = settings
        self.policy_processor = processor  # the policy's; the judge's own comes with its model
        self.model: Any = None
        self.processor: Any = None
        self.tokens: AnswerTokens | None = None

    def _load(self) -> None:
        from entrypoint.models.loading import load_model, load_processor, resolve_model

        settings = self.settings
        ref = resolve_model(settings.judge_model, "auto", None, settings.cache_dir.expanduser().resolve(),
                            "DPO_JUDGE_MODEL")
        self.processor = load_processor(ref, settings.max_image_tiles, settings.image_max_pixels)
        # "ddp": a whole copy on this process's device, whatever DPO_DISTRIBUTED is (only rank 0 judges)
        self.model = load_model(ref, settings.quantization, "ddp", self.processor).eval()
        self.tokens = answer_tokens(getattr(self.processor, "tokenizer", self.processor))
        log.info("judge: %s loaded; yes and no are %s", settings.judge_model, self.tokens.shown)

    def score(self, rows: Any, samples: Sequence[Sequence[str]],
              journal: Journal | None = None) -> list[list[Verdict]]:
        """Each row's samples judged; a row `journal` holds is not judged again, each other recorded as judged."""
        done = journal.done if journal is not None else {}
        verdicts: list[list[Verdict]] = []
        with progress("judge: claims", len(samples), "prompts") as advance:
            for index, answers in enumerate(samples):
                if index in done:
                    verdicts.append(done[index])
                else:
                    verdicts.append(self._judge(rows[index], answers))
                    if journal is not None:
                        journal.add(index, verdicts[-1])
                advance(1)
        return verdicts

    def _judge(self, row: dict[str, Any], answers: Sequence[str]) -> list[Verdict]:
        if self.model is None:
            self._load()
        return judge_answers(self.model, self.processor, row, answers, self.settings.per_device_eval_batch_size,
                             self.tokens)

    def close(self) -> None:
        """Free the judge model (its memory back to the GPU before training goes on)."""
        import torch

        self.model = self.processor = self.tokens = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
