"""The model judge (DPO_JUDGE=model, onpolicy/claims.py): RLAIF-V's divide and conquer. Answers split into claims
and asked as yes/no questions; a stand-in judge whose P(yes) and P(no) are known gives exact verdicts and scores
through the real batching and scoring path; the real tiny judge model judges sample:vqa-rad rows, with a journal."""

from __future__ import annotations

import math
import time
import weakref

import bitsandbytes  # noqa: F401 - see below
import pytest

from conftest import settings_from
from entrypoint.errors import ConfigError
from entrypoint.onpolicy.claims import (
    ModelJudge,
    claim_question,
    judge_answers,
    split_claims,
)
from entrypoint.onpolicy.journal import Journal

# bitsandbytes is imported above, at collection, not first in a test: its CPU backend logs a warning whose argument is
# an exception, and pytest's log capture keeps the record, the exception's traceback and so the frames of whatever
# imported it first (loading the judge model, with the model in them), which close() could then not free.


# ---- divide

@pytest.mark.parametrize(("answer", "claims"), [
    ("There is a mass in the left lung. The heart is enlarged, and the lungs are clear.",
     ["There is a mass in the left lung", "The heart is enlarged", "the lungs are clear"]),
    ("The lesion measures 3.5 cm; it is in the liver, but there is no effusion.",  # "3.5" ends no sentence
     ["The lesion measures 3.5 cm", "it is in the liver", "there is no effusion"]),
    ("There is a cat, a dog, and a bird.", ["There is a cat, a dog, and a bird"]),  # "a bird" is no claim alone
    ("It is red; blue", ["It is red; blue"]),
    ("1. The heart is big.\n2. The lungs are clear.\n- A tube is present",  # list markers dropped
     ["The heart is big", "The lungs are clear", "A tube is present"]),
    ("No, there is none.", ["No, there is none"]),  # a plain comma joins no clauses
    ("Yes.", ["Yes"]),
    ("42", ["42"]),
    ("...", ["..."]),  # any answer that is not empty has a claim
    ("", []),
    ("  \n ", []),
])
def test_an_answer_splits_into_its_sentences_and_coordinated_clauses(answer, claims):
    assert split_claims(answer) == claims


def test_a_claim_is_asked_as_a_yes_no_question_after_the_prompts_question():
    assert claim_question("There is a mass", "Is there a  mass?") == (
        'The question was: "Is there a mass?"\n'
        'Is the following statement about the image true? "There is a mass" Please answer yes or no.')
    assert claim_question("There is a mass", " ") == (
        'Is the following statement about the image true? "There is a mass" Please answer yes or no.')


# ---- conquer: a judge whose yes/no probabilities are known

class KnownJudge:
    """A stand-in judge model: after a question whose text holds one of `table`'s words, its next-token P(yes) and
    P(no) are the table's (spread evenly over the yes and the no tokens, the rest on one other token). At every other
    position yes and no are swapped, so reading a padding's or an earlier token's logits gives the other verdict."""

    def __init__(self, tokenizer, tokens, table: dict[str, tuple[float, float]]):
        self.tokenizer, self.tokens, self.table, self.device = tokenizer, tokens, table, "cpu"
        self.batches: list[int] = []

    def _logits(self, p_yes: float, p_no: float):
        import torch

        logits = torch.full((len(self.tokenizer),), -1e4)
        logits[list(self.tokens.yes)] = math.log(p_yes / len(self.tokens.yes))
        logits[list(self.tokens.no)] = math.log(p_no / len(self.tokens.no))
        other = next(i for i in range(len(self.tokenizer)) if i not in self.tokens.yes + self.tokens.no)
        logits[other] = math.log(1 - p_yes - p_no)
        return logits

    def __call__(self, input_ids, attention_mask, logits_to_keep, **inputs):
        from types import SimpleNamespace

        self.batches.append(len(input_ids))
        last = attention_mask.sum(dim=-1) - 1
        logits = self._logits(0.5, 0.4).repeat(len(input_ids), input_ids.shape[1], 1)
        for b in range(len(input_ids)):
            text = self.tokenizer.decode(input_ids[b, :last[b] + 1])
            [(p_yes, p_no)] = [odds for word, odds in self.table.items() if word in text]
            logits[b] = self._logits(p_no, p_yes)
            logits[b, last[b]] = self._logits(p_yes, p_no)
        return SimpleNamespace(logits=logits[:, logits_to_keep])


@pytest.fixture(scope="module")
def tiny(cache_dir):
    from entrypoint.models.loading import load_processor, resolve_model

    return load_processor(resolve_model("tiny:llava-next", "auto", None, cache_dir))


def test_a_judge_whose_yes_no_probabilities_are_known_gives_exact_verdicts_and_scores(tiny):
    from PIL import Image

    from entrypoint.evaluation.yes_no import answer_tokens

    tokens = answer_tokens(tiny.tokenizer)
    model = KnownJudge(tiny.tokenizer, tokens, {"pneumothorax": (0.7, 0.2), "enlarged": (0.2, 0.6),
                                                "effusion": (0.3, 0.5), "fracture": (0.9, 0.05)})
    row = {"prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                   {"type": "text", "text": "What does the scan show?"}]}],
           "images": [Image.new("RGB", (32, 32), "gray")]}
    answers = ["There is a pneumothorax. The heart is enlarged, and a small effusion is present.",
               "No fracture is seen.", ""]
    verdicts = judge_answers(model, tiny, row, answers, batch_size=3, tokens=tokens)
    assert model.batches == [3, 1]  # the row's 4 claims, in batches of 3, padded on the right
    assert [v["score"] for v in verdicts] == [-2.0, 0.0, 0.0]  # minus the claims judged false; the empty answer 0
    first = verdicts[0]["claims"]
    assert [(c["claim"], c["true"]) for c in first] == [
        ("There is a pneumothorax", True), ("The heart is enlarged", False), ("a small effusion is present", False)]
    assert [c["p_yes"] for c in first] == pytest.approx([0.7 / 0.9, 0.2 / 0.8, 0.3 / 0.8], abs=1e-5)
    assert first[0]["question"] == claim_question("There is a pneumothorax", "What does the scan show?")
    assert [(c["claim"], c["true"]) for c in verdicts[1]["claims"]] == [("No fracture is seen", True)]
    assert verdicts[1]["claims"][0]["p_yes"] == pytest.approx(0.9 / 0.95, abs=1e-5)
    assert verdicts[2] == {"score": 0.0, "claims": []}
    alone = judge_answers(model, tiny, row, answers, batch_size=1, tokens=tokens)  # one question a batch
    assert model.batches[2:] == [1, 1, 1, 1]
    assert [[(c["claim"], c["true"]) for c in v["claims"]] for v in alone] == [
        [(c["claim"], c["true"]) for c in v["claims"]] for v in verdicts]
    assert [c["p_yes"] for v in alone for c in v["claims"]] == pytest.approx(
        [c["p_yes"] for v in verdicts for c in v["claims"]], abs=1e-6)


# ---- the setting it needs

def test_the_model_judge_without_a_judge_model_is_a_config_error_naming_the_setting(monkeypatch, tmp_path):
    from entrypoint.planning.rounds import judge_model

    settings = settings_from(monkeypatch, DPO_DATASET="sample:vqa-rad", DPO_JUDGE="model", DPO_ROUNDS="1")
    with pytest.raises(ConfigError, match=r"DPO_JUDGE=model needs DPO_JUDGE_MODEL.*e\.g\. DPO_JUDGE_MODEL=\S+"):
        judge_model(settings, tmp_path)
    assert judge_model(settings_from(monkeypatch, DPO_JUDGE_MODEL="tiny:llava-next"), tmp_path).ref.family.name \
        == "llava-next"
    monkeypatch.delenv("DPO_JUDGE_MODEL")
    assert judge_model(settings_from(monkeypatch, DPO_JUDGE="ground-truth"), tmp_path) is None


# ---- the real tiny judge model

@pytest.fixture(scope="module")
def vqa_rad_rows(tiny, cache_dir):
    """3 rows of sample:vqa-rad, prepared as the job prepares them for the tiny LLaVA-NeXT."""
    from entrypoint.data.images import size_limit
    from entrypoint.data.prepare import DataSpec, RowRules, prepare

    spec = DataSpec("sample:vqa-rad", "train", max_samples=8)
    return prepare(spec, cache_dir, RowRules(limit=size_limit(tiny.image_processor))).train.select(range(3))


def test_the_tiny_judge_model_judges_every_claim_loads_lazily_skips_journalled_rows_and_frees_itself(
        monkeypatch, tmp_path, cache_dir, tiny, vqa_rad_rows):
    settings = settings_from(monkeypatch, DPO_MODEL="tiny:llava-next", DPO_DATASET="sample:vqa-rad",
                             DPO_JUDGE="model", DPO_JUDGE_MODEL="tiny:llava-next", DPO_CACHE_DIR=str(cache_dir),
                             DPO_PER_DEVICE_EVAL_BATCH_SIZE="2")
    samples = [["Yes, there is a mass in the liver, and the kidneys look normal.", "no"]] * 3
    judge = ModelJudge(settings, tiny)
    assert judge.name == "model" and judge.model is None  # nothing loaded until the first score
    started = time.monotonic()
    verdicts = judge.score(vqa_rad_rows, samples)
    assert judge.model is not None and judge.processor is not tiny  # its own model and processor
    assert [len(group) for group in verdicts] == [2, 2, 2]
    for group, answers in zip(verdicts, samples, strict=True):
        for one, answer in zip(group, answers, strict=True):
            claims = one["claims"]
            assert [c["claim"] for c in claims] == split_claims(answer)
            assert all(0 <= c["p_yes"] <= 1 and c["true"] == (c["p_yes"] > 0.5) for c in claims)
            assert one["score"] == -sum(not c["true"] for c in claims)
    assert [len(one["claims"]) for one in verdicts[0]] == [2, 1]

    calls = []
    hook = judge.model.register_forward_hook(lambda module, args, output: calls.append(1))
    journal = Journal(tmp_path / "judged.jsonl")
    recorded = [{"score": -7.0, "claims": []}, {"score": 0.0, "claims": []}]
    journal.add(0, recorded)
    again = judge.score(vqa_rad_rows, samples, journal)
    hook.remove()
    assert again[0] is recorded and again[1:] == verdicts[1:]  # row 0 as recorded; the others judged the same
    assert len(calls) == 2 * 2  # rows 1 and 2 only: 3 claims a row, in batches of 2
    assert Journal(tmp_path / "judged.jsonl").done == {0: recorded, 1: verdicts[1], 2: verdicts[2]}

    model = weakref.ref(judge.model)
    judge.close()
    assert judge.model is None and model() is None
    assert time.monotonic() - started < 60
