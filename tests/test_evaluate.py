"""Evaluation: each figure checked on data where its right value is known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from conftest import job_env
from entrypoint.evaluation.answers import closed_correct, normalize_answer, task_accuracy, token_f1
from entrypoint.evaluation.comparison import comparison
from entrypoint.evaluation.evaluate import Preference
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
    from entrypoint.evaluation.answers import greedy_answers
    from entrypoint.evaluation.evaluate import base_and_tuned

    trainer, processor, pairs = trainer_and_pairs
    pairs = pairs.select(range(4))
    greedy = greedy_answers(trainer.model, processor, pairs, len(pairs))["base"]
    unrelated = ["Quartz trumpet velvet harbor."] * len(pairs)
    own = _with_answers(pairs, greedy, unrelated)
    trainer.eval_dataset = own
    result = base_and_tuned(trainer, processor, own, ground_truth=True, generations=2, is_main=True)
    assert result["preference"]["base"]["accuracy"] == 1.0
    assert sum(kind["questions"] for kind in result["task"].values()) == len(pairs)
    assert all(kind["base"] == 1.0 for kind in result["task"].values()) and result["seconds"]["answers"] > 0
    assert len(result["answers"]["base"]) == len(pairs)  # ground truth: every eval prompt is answered
