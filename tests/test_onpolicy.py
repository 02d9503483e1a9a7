"""On-policy rounds (DPO_ROUNDS, onpolicy/): the ground-truth judge, RLAIF-V's pairing and length balance, and the
loop end to end on the tiny model: each round's samples and pairs kept, a kill -9 in round 2 then a restart giving
the same pairs and the same adapter, bit for bit."""

from __future__ import annotations

import json
import time

import pytest

from conftest import job_env, run_job, start_job, wait_for
from entrypoint.onpolicy.judge import ground_truth_score
from entrypoint.onpolicy.pairs import length_balanced, make_pairs, prompt_pairs, shorter_than
from entrypoint.run import checkpoints
from entrypoint.run.outputs import sha256_file


def test_the_ground_truth_judge_scores_yes_no_by_the_first_word_and_open_answers_by_token_f1():
    assert ground_truth_score("No, there is none.", "no") == 1.0
    assert ground_truth_score("There is no effusion", "no") == 0.0  # the answer's yes or no is its first word
    assert ground_truth_score("the left lung", "left lung") == 1.0  # articles dropped
    assert ground_truth_score("left kidney", "left lung") == 0.5  # precision 1/2, recall 1/2


def test_a_prompt_pairs_best_against_worst_then_inwards_and_never_a_tie():
    samples, scores = ["a", "b", "c", "d", "e", "b"], [0.9, 0.1, 0.5, 0.5, 0.0, 0.3]
    pairs = prompt_pairs(0, samples, scores, per_prompt=2)
    # distinct answers by score: a .9, c .5, d .5, b .3 (its best), e 0
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "e"), ("c", "b")]
    assert prompt_pairs(0, ["x", "y"], [0.5, 0.5], per_prompt=2) == []


def test_the_length_balance_drops_pairs_whose_chosen_answer_is_much_shorter():
    """RLAIF-V's filter: (rejected - chosen) / rejected words above the share r goes; r is searched for the smallest
    gap between the mean lengths."""
    short = prompt_pairs(0, ["yes", "no it is a large mass in the liver"], [1.0, 0.0], 1)  # 1 word vs 9
    even = prompt_pairs(1, ["a small mass", "a large mass"], [1.0, 0.0], 1)
    longer = prompt_pairs(2, ["a mass in the left lobe", "a mass"], [1.0, 0.0], 1)
    assert shorter_than(short + even + longer, 0.5) == even + longer  # 8/9 > 0.5
    # kept whole, means 3.3 and 4.7 words (gap 0.29 of 4.7) beat 4.5 and 2.5 (0.8) without the short pair
    assert length_balanced(short + even + longer) == (short + even + longer, 0.9)
    level = prompt_pairs(3, ["one two three four", "four three two one x"], [1.0, 0.0], 1)  # 4 vs 5 words
    assert length_balanced(short + even + level) == (even, 0.0)  # 3 and 3 words: no gap at all
    assert length_balanced([]) == ([], None)


def test_prompts_without_a_pair_are_counted_by_reason():
    pairing = make_pairs([["a", "a"], ["x", "y"], ["good answer", "bad"]], [[1, 0], [0.5, 0.5], [1, 0]], 2)
    assert [(p.prompt, p.chosen) for p in pairing.pairs] == [(2, "good answer")]
    assert pairing.unpaired == {"fewer than 2 distinct answers": 1, "every answer scored the same": 1}


ROUNDS = dict(model="tiny:llava-next", dataset="sample:vqa-rad", max_samples="16", rounds="2", max_steps="4",
              save_steps="2", learning_rate="5e-3", samples_per_prompt="4", sample_max_new_tokens="6",
              mix_dataset_pairs="true", per_device_train_batch_size="4", gradient_accumulation_steps="1",
              eval_generations="0", eval_fraction="0.2")


def _kept(output):
    rounds = output / "checkpoints" / "rounds"
    return {f"{r}/{name}": (rounds / str(r) / name).read_text() for r in (1, 2)
            for name in ("samples.jsonl", "pairs.jsonl")}


@pytest.mark.slow
def test_rounds_keep_their_samples_and_a_kill_in_round_2_resumes_to_the_same_adapter(tmp_path, cache_dir):
    whole = tmp_path / "whole"
    done = run_job(job_env(cache_dir, whole, **ROUNDS))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((whole / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    prompts = json.loads((whole / "data_report.json").read_text())["train_pairs"]  # every training prompt sampled
    assert all(r["prompts"] == prompts and r["samples"] == prompts * 4 for r in metrics["rounds"])
    first = [json.loads(line) for line in _kept(whole)["1/samples.jsonl"].splitlines()]
    assert len(first) == prompts and all(len(record["samples"]) == 4 == len(record["scores"]) for record in first)

    killed = tmp_path / "killed"
    env = job_env(cache_dir, killed, **ROUNDS)
    process = start_job(env)
    wait_for(killed / "checkpoints" / "rounds" / "2" / "checkpoints" / "checkpoint-2" / checkpoints.COMPLETE_MARKER,
             process)
    time.sleep(0.1)
    process.kill()
    process.wait()
    restarted = run_job(env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "round 2: resuming from" in restarted.stderr and "round 1: sampling" not in restarted.stderr
    assert _kept(killed) == _kept(whole)  # the same samples, scores and pairs
    adapter = "adapter/adapter_model.safetensors"
    assert sha256_file(killed / adapter) == sha256_file(whole / adapter)
