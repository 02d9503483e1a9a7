"""Evaluation: each figure checked on data where its right value is known."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest

from conftest import job_env
from entrypoint.evaluation.answers import closed_correct, normalize_answer, task_accuracy, token_f1
from entrypoint.evaluation.comparison import comparison
from entrypoint.evaluation.evaluate import Preference
from entrypoint.evaluation.yes_no import yes_no_figures, yes_no_report
from entrypoint.planning.schedule import eval_schedule


def test_answers_are_compared_after_normalising_case_punctuation_and_articles():
    assert normalize_answer("The  Left lung.") == "left lung"
    assert closed_correct("Yes, there is a mass.", "yes") and closed_correct("no", "No")
    assert not closed_correct("No.", "yes") and not closed_correct("", "yes")
    assert not closed_correct("yesterday", "yes")


def test_token_f1_against_hand_computed_values():
    assert token_f1("the left lung", "Left lung") == 1.0
    assert token_f1("left upper lobe", "left lobe") == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("right kidney", "left lung") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("lung", "") == 0.0


def test_task_accuracy_splits_yes_no_from_open_questions():
    references = ["yes", "No", "left lung", "brain"]
    answers = {"base": ["no", "no", "lung", "heart"], "tuned": ["Yes.", "no", "the left lung", "brain"]}
    task = task_accuracy(references, answers)
    assert task["closed"] == {"questions": 2, "base": 0.5, "tuned": 1.0}
    assert task["open"]["questions"] == 2
    assert task["open"]["base"] == pytest.approx((2 / 3 + 0) / 2)  # "lung" vs "left lung": P 1, R 1/2
    assert task["open"]["tuned"] == 1.0
    assert "closed" not in task_accuracy(["left lung"], {"base": ["x"]})


def test_preference_accuracy_counts_ties_as_not_preferred():
    summary = Preference(chosen=[-1.0, -2.0, -3.0, -1.0], rejected=[-2.0, -1.0, -3.0, -1.5]).summary()
    assert summary == {"accuracy": 0.5, "mean_gap": pytest.approx((1 - 1 + 0 + 0.5) / 4), "pairs": 4}


# ---- yes/no questions: POPE's figures

REFERENCES = ["yes", "yes", "yes", "Yes", "no", "no", "no", "no", "no", "No"]
SAID_YES = [True, True, True, False, True, True, False, False, False, False]


def test_yes_no_figures_against_hand_computed_values():
    # yes positive: TP 3 (0-2), FN 1 (3), FP 2 (4, 5), TN 4 (6-9)
    figures = yes_no_figures(REFERENCES, SAID_YES)
    assert figures == {"questions": 10, "accuracy": 0.7, "precision": 0.6, "recall": 0.75,
                       "f1": pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75)), "yes_ratio": 0.5,
                       "tp": 3, "fp": 2, "tn": 4, "fn": 1}
    always_yes = yes_no_figures(REFERENCES, [True] * 10)  # POPE's telltale of a hallucinating model
    assert (always_yes["recall"], always_yes["precision"], always_yes["yes_ratio"]) == (1.0, 0.4, 1.0)
    never = yes_no_figures(REFERENCES, [False] * 10)
    assert never["precision"] is None and never["recall"] == 0.0 and never["f1"] == 0.0 and never["accuracy"] == 0.6


def test_yes_no_report_gives_each_category_its_own_figures():
    categories = ["adversarial"] * 4 + ["random"] * 6
    report = yes_no_report(REFERENCES, categories, {"base": [1.0 if s else -1.0 for s in SAID_YES],
                                                    "tuned": [0.5, 0.5, 0.5, 0.5, -0.5, -0.5, -0.5, -0.5, -2, -2]})
    assert report["base"]["accuracy"] == 0.7 and report["tuned"]["accuracy"] == 1.0
    adversarial, random = report["categories"]["adversarial"], report["categories"]["random"]
    assert adversarial["questions"] == 4 and adversarial["base"]["recall"] == 0.75
    assert adversarial["base"]["precision"] == 1.0 and adversarial["base"]["yes_ratio"] == 0.75
    assert random["base"]["recall"] is None and random["base"]["precision"] == 0.0  # no yes among them
    assert random["base"]["accuracy"] == pytest.approx(4 / 6) and random["tuned"]["yes_ratio"] == 0.0
    assert list(report["categories"]) == ["adversarial", "random"]
    assert yes_no_report(["yes"], [""], {"base": [1.0], "tuned": [1.0]})["categories"] == {}


class KnownYesNo:
    """A model whose next-token distribution after each prompt is given, question by question: P(yes) and P(no)
    (spread evenly over the yes and the no tokens), the rest on one other token. At every other position yes and
    no are swapped, so that reading the logits of a padding or an earlier token gives the other answer."""

    def __init__(self, tokens, vocab: int, base: list[tuple[float, float]], tuned: list[tuple[float, float]]):
        self.tokens, self.vocab, self.table = tokens, vocab, {"base": base, "tuned": tuned}
        self.seen, self.adapter, self.training, self.device = {"base": 0, "tuned": 0}, True, False, "cpu"

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    @contextlib.contextmanager
    def disable_adapter(self):
        self.adapter = False
        try:
            yield
        finally:
            self.adapter = True

    def _logits(self, p_yes: float, p_no: float):
        import torch

        logits = torch.full((self.vocab,), -1e4)
        logits[list(self.tokens.yes)] = math.log(p_yes / len(self.tokens.yes))
        logits[list(self.tokens.no)] = math.log(p_no / len(self.tokens.no))
        other = next(i for i in range(self.vocab) if i not in self.tokens.yes + self.tokens.no)
        logits[other] = math.log(1 - p_yes - p_no)
        return logits

    def __call__(self, input_ids, attention_mask, logits_to_keep, **inputs):
        name = "tuned" if self.adapter else "base"
        rows = self.table[name][self.seen[name]:self.seen[name] + len(input_ids)]
        self.seen[name] += len(input_ids)
        last = attention_mask.sum(dim=-1) - 1
        logits = self._logits(0.3, 0.6).repeat(len(input_ids), input_ids.shape[1], 1)
        for b, (p_yes, p_no) in enumerate(rows):
            logits[b] = self._logits(p_no, p_yes)
            logits[b, last[b]] = self._logits(p_yes, p_no)
        return SimpleNamespace(logits=logits[:, logits_to_keep])


@pytest.fixture(scope="module")
def pope_pairs(tmp_path_factory, cache_dir):
    """10 questions of sample:pope (6 adversarial, then 4 popular; yes and no in turn), prepared as the job prepares
    them for the tiny LLaVA-NeXT, with its processor."""
    from entrypoint.data.images import size_limit
    from entrypoint.data.prepare import DataSpec, RowRules, prepare
    from entrypoint.models.loading import load_processor, resolve_model

    processor = load_processor(resolve_model("tiny:llava-next", "auto", None, cache_dir))
    spec = DataSpec("sample:pope", "train", setting="DPO_EVAL_DATASET", min_pairs=1)
    pairs = prepare(spec, cache_dir, RowRules(limit=size_limit(processor.image_processor))).train
    answers = [chosen[0]["content"][0]["text"] for chosen in pairs["chosen"]]
    picked = []
    for category, n in (("adversarial", 3), ("popular", 2)):  # yes, no, yes, no, ... in each
        yes, no = ([i for i, (a, c) in enumerate(zip(answers, pairs["category"], strict=True)) if c == category
                    and a == answer][:n] for answer in ("yes", "no"))
        picked += [i for both in zip(yes, no, strict=True) for i in both]
    return processor, pairs.select(picked)


@pytest.mark.parametrize("batch_size", [3, 10])
def test_yes_no_answers_are_the_models_next_token_yes_against_no(pope_pairs, batch_size):
    from entrypoint.evaluation.yes_no import answer_tokens, evaluate_yes_no, yes_margins

    processor, pairs = pope_pairs
    references = [pair["chosen"][0]["content"][0]["text"] for pair in pairs]
    assert references == ["yes", "no"] * 5 and pairs["category"] == ["adversarial"] * 6 + ["popular"] * 4
    assert len({len(pair["prompt"][0]["content"][1]["text"]) for pair in pairs}) > 1  # a batch needs padding
    base = [(0.6, 0.3)] * 10  # says yes to everything
    tuned = [(0.25, 0.35), *[(0.7, 0.2) if ref == "yes" else (0.1, 0.8) for ref in references[1:]]]  # 0 wrong
    tokens = answer_tokens(processor.tokenizer)

    def model():
        return KnownYesNo(tokens, len(processor.tokenizer), base, tuned)

    margins = yes_margins(model(), processor, pairs, batch_size)
    assert margins["base"] == pytest.approx([math.log(2)] * 10, abs=1e-4)
    assert margins["tuned"] == pytest.approx([math.log(p / q) for p, q in tuned], abs=1e-4)
    report = evaluate_yes_no(model(), processor, pairs, references, batch_size)
    assert {k: report["base"][k] for k in ("accuracy", "precision", "recall", "yes_ratio")} == {
        "accuracy": 0.5, "precision": 0.5, "recall": 1.0, "yes_ratio": 1.0}
    assert report["base"]["f1"] == pytest.approx(2 / 3)
    # tuned: question 0 (yes) answered no; TP 4, FN 1, TN 5
    assert {k: report["tuned"][k] for k in ("accuracy", "precision", "recall", "yes_ratio")} == {
        "accuracy": 0.9, "precision": 1.0, "recall": 0.8, "yes_ratio": 0.4}
    assert report["tuned"]["f1"] == pytest.approx(8 / 9)
    adversarial, popular = report["categories"]["adversarial"]["tuned"], report["categories"]["popular"]["tuned"]
    assert (adversarial["accuracy"], adversarial["recall"], adversarial["f1"]) == (pytest.approx(5 / 6),
                                                                                  pytest.approx(2 / 3), 0.8)
    assert popular["accuracy"] == popular["f1"] == 1.0 and popular["yes_ratio"] == 0.5
    assert report["questions"] == 10 and "next token" in report["scoring"]


def test_yes_and_no_are_the_tokens_that_start_the_words():
    from entrypoint.evaluation.yes_no import answer_tokens

    class Words:  # a tokenizer that splits "yes" into "y" "es" but has "Yes" whole, and starts "No" with "N"
        pieces = {"yes": ["y", "es"], "Yes": ["Yes"], "YES": ["Y", "ES"], " yes": [" yes"], " Yes": [" ", "Yes"],
                  " YES": [" ", "YES"], "no": ["no"], "No": ["N", "o"], "NO": ["N", "O"], " no": [" no"],
                  " No": [" ", "No"], " NO": [" ", "NO"]}
        vocab = sorted({piece for pieces in pieces.values() for piece in pieces})

        def encode(self, text, add_special_tokens=False):
            return [self.vocab.index(piece) for piece in self.pieces[text]]

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

        def convert_ids_to_tokens(self, i):
            return self.vocab[i]

    tokens = answer_tokens(Words())
    assert tokens.shown == {"yes": sorted(["y", "Yes", "Y", " yes"], key=Words.vocab.index),
                            "no": sorted(["no", "N", " no"], key=Words.vocab.index)}  # never the bare space


def test_comparison_shows_pope_figures_in_place_of_exact_match():
    yes_no = yes_no_report(REFERENCES, [""] * 10, {"base": [1.0] * 10, "tuned": [1.0 if s else -1.0 for s in SAID_YES]})
    rows = {row["metric"]: row for row in comparison({"pairs": 10, "task": {"closed": {"questions": 10, "base": 0.4,
                                                                                       "tuned": 0.7}}}, {}, {}, yes_no)}
    assert list(rows) == ["yes/no accuracy", "yes/no precision", "yes/no recall", "yes/no F1",
                          "yes/no: share answered yes"]
    assert (rows["yes/no accuracy"]["base"], rows["yes/no accuracy"]["tuned"]) == (0.4, 0.7)
    assert rows["yes/no: share answered yes"]["tuned"] == 0.5 and rows["yes/no F1"]["count"] == 10


def _settings(monkeypatch, tmp_path, **settings):
    from entrypoint.config.settings import load_settings

    for key, value in job_env(tmp_path, tmp_path, **settings).items():
        if key.startswith("DPO_"):
            monkeypatch.setenv(key, value)
    return load_settings()


@pytest.mark.parametrize(("settings", "expected"), [
    ({"max_steps": "40"}, 8),  # about 5 evaluations a run
    ({"max_steps": "3"}, 1),
    ({"max_steps": "40", "eval_steps": "7"}, 7),
    ({"max_steps": "40", "eval_steps": "0.25"}, 10),  # a fraction of the run
    ({"max_steps": "40", "eval_strategy": "no"}, None),  # the user's choice stands
])
def test_evaluation_during_training_follows_the_run_length(monkeypatch, tmp_path, settings, expected):
    from entrypoint.training.trainer import dpo_config

    config = _settings(monkeypatch, tmp_path, model="tiny:llava-next", dataset="sample:rlaif-v", **settings)
    args = dpo_config(config, tmp_path, "run")
    assert eval_schedule(config, args, train_pairs=100, eval_pairs=10) == expected
    if expected:
        assert (args.eval_strategy, args.eval_steps) == ("steps", expected)
    assert eval_schedule(config, dpo_config(config, tmp_path, "run"), train_pairs=100, eval_pairs=0) is None


def test_total_steps_from_epochs(monkeypatch, tmp_path):
    from entrypoint.planning.schedule import optimizer_steps
    from entrypoint.training.trainer import dpo_config

    config = _settings(monkeypatch, tmp_path, model="tiny:llava-next", dataset="sample:rlaif-v",
                       num_train_epochs="2", per_device_train_batch_size="4", gradient_accumulation_steps="2")
    assert optimizer_steps(dpo_config(config, tmp_path, "run"), train_pairs=33, world_size=2) == 2 * 3  # 16 a step
    # As transformers' Trainer counts them (its max_steps): ceil(epochs x steps an epoch), a short step counting.
    plan = SimpleNamespace(max_steps=-1, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    assert optimizer_steps(SimpleNamespace(**vars(plan), num_train_epochs=3), train_pairs=10) == 9  # 3 batches x 3
    assert optimizer_steps(SimpleNamespace(**vars(plan), num_train_epochs=0.5), train_pairs=10) == 2  # half of 3


def test_comparison_labels_the_step_zero_rewards():
    evaluation = {"pairs": 4, "preference": {"base": {"accuracy": 0.25, "mean_gap": -0.1, "pairs": 4},
                                             "tuned": {"accuracy": 0.75, "mean_gap": 0.2, "pairs": 4}},
                  "task": {"open": {"questions": 3, "base": 0.1, "tuned": 0.4}}}
    rows = comparison(evaluation, {"loss": math.log(2), "rewards/accuracies": 0.0}, {"loss": 0.5,
                                                                                    "rewards/accuracies": 0.75})
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["preference accuracy (likelihood)"]["tuned"] == 0.75
    assert by_metric["open questions: token F1"]["count"] == 3
    assert "yes/no questions: exact match" not in by_metric
    assert "step 0" in by_metric["DPO reward accuracy"]["note"] and by_metric["DPO loss"]["base"] == math.log(2)
    assert "DPO reward margin" not in by_metric  # not in the metrics given


# ---- on a real (tiny) model, through TRL's own eval batches

@pytest.fixture(scope="module")
def trainer_and_pairs(tmp_path_factory, cache_dir):
    from entrypoint.config.settings import load_settings
    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.training.trainer import build_trainer, dpo_config

    tmp = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in job_env(cache_dir, tmp, model="tiny:llava-next", dataset="sample:vqa-rad",
                                  per_device_eval_batch_size="3", eval_fraction="0.3").items():
            if key.startswith("DPO_"):
                patch.setenv(key, value)
        settings = load_settings()
    ref = resolve_model(settings.model, "auto", None, cache_dir)
    processor = load_processor(ref)
    args = dpo_config(settings, tmp, "evaluate")
    data = prepare_pairs(settings, cache_dir, processor, ref.family, args.max_length, max_samples=30)
    pairs = data.eval.select(range(6))
    trainer = build_trainer(settings, load_model(ref, "none", processor=processor), ref.family, processor,
                            data.train, pairs, args)
    return trainer, processor, pairs


def _with_answers(pairs, chosen, rejected):
    """The same prompts and images with other answers (a list per pair, or a function of the pair)."""
    def answer(text):
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return pairs.map(lambda pair, i: {"chosen": answer(chosen[i]), "rejected": answer(rejected[i])},
                     with_indices=True)


def _preference(trainer, pairs):
    from entrypoint.evaluation.evaluate import likelihood_preference

    trainer.eval_dataset = pairs
    return likelihood_preference(trainer)


def test_an_untrained_adapter_is_the_base_model(trainer_and_pairs):
    trainer, _, pairs = trainer_and_pairs
    result = _preference(trainer, pairs)
    assert result["base"]["pairs"] == len(pairs) == 6
    assert result["tuned"] == pytest.approx(result["base"], abs=1e-6)  # LoRA's B starts at zero


def test_swapping_chosen_and_rejected_mirrors_the_figures(trainer_and_pairs):
    from entrypoint.data.formats import message_text

    trainer, _, pairs = trainer_and_pairs
    chosen, rejected = [message_text(p["chosen"]) for p in pairs], [message_text(p["rejected"]) for p in pairs]
    plain = _preference(trainer, pairs)["base"]
    swapped = _preference(trainer, _with_answers(pairs, rejected, chosen))["base"]
    assert swapped["mean_gap"] == pytest.approx(-plain["mean_gap"], abs=1e-5)
    assert swapped["accuracy"] == pytest.approx(1 - plain["accuracy"])  # no exact ties between different texts


def test_identical_answers_give_no_gap_and_no_preference(trainer_and_pairs):
    trainer, _, pairs = trainer_and_pairs
    same = ["the left lung", "a small mass", "no", "yes", "brain", "fluid"]
    result = _preference(trainer, _with_answers(pairs, same, same))["base"]
    assert result["mean_gap"] == pytest.approx(0, abs=1e-6) and result["accuracy"] == 0


def test_the_models_own_greedy_answer_is_preferred_and_scores_full_marks(trainer_and_pairs):
    """Chosen = the base model's greedy answer: its likelihood beats an unrelated answer on every pair, and as
    the reference answer it gives task accuracy 1 (the base) by the same scoring the job reports."""
    from entrypoint.evaluation.answers import greedy_answers, is_closed
    from entrypoint.evaluation.evaluate import base_and_tuned

    trainer, processor, pairs = trainer_and_pairs
    pairs = pairs.select(range(4))
    greedy = greedy_answers(trainer.model, processor, pairs, len(pairs))["base"]
    assert not any(is_closed(answer) for answer in greedy)  # open answers: scored by token F1
    unrelated = ["Quartz trumpet velvet harbor."] * len(pairs)
    own = _with_answers(pairs, greedy, unrelated)
    trainer.eval_dataset = own
    result = base_and_tuned(trainer, processor, own, ground_truth=True, generations=2, is_main=True)
    assert result["preference"]["base"]["accuracy"] == 1.0
    assert sum(kind["questions"] for kind in result["task"].values()) == len(pairs)
    assert all(kind["base"] == 1.0 for kind in result["task"].values()) and result["seconds"]["answers"] > 0
    assert len(result["answers"]["base"]) == len(pairs)  # ground truth: every eval prompt is answered


def test_batched_yes_no_scoring_is_the_one_by_one_scoring_on_a_real_model(trainer_and_pairs):
    from entrypoint.evaluation.yes_no import yes_margins

    trainer, processor, pairs = trainer_and_pairs
    batched = yes_margins(trainer.model, processor, pairs, batch_size=4)
    for i in (0, len(pairs) - 1):
        alone = yes_margins(trainer.model, processor, pairs.select([i]), batch_size=1)
        assert alone["base"][0] == pytest.approx(batched["base"][i], abs=1e-4)
    assert batched["tuned"] == pytest.approx(batched["base"], abs=1e-5)  # an untrained adapter: LoRA's B is zero
    assert len(set(round(m, 3) for m in batched["base"])) > 1  # the margins depend on the question and image
