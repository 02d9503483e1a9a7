"""On-policy rounds (DPO_ROUNDS, onpolicy/): the ground-truth judge, RLAIF-V's pairing and length balance, the
journal, the base reference, and the loop end to end on the tiny model: it learns from its own samples, each round's
samples and pairs kept (in the checkpoint dir, the run dir, the manifest, the report, wandb), a kill -9 in round 2
then a restart giving the same pairs and the same adapter, bit for bit, and a round without pairs exiting 65."""

from __future__ import annotations

import json
import time

import pytest
from test_tracking import wandb_records

from conftest import job_env, run_job, settings_from, start_job, wait_for
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


# The tiny model is random: its answers are noise and score 0 at first. Round 1 learns from the dataset's own pairs
# (DPO_MIX_DATASET_PAIRS) with an SFT term beside DPO's (TRL's loss_type "sft" on the chosen answers, as iterative
# RPO adds it to on-policy rounds); its yes and no come up among the samples of later rounds at a low temperature
# (its logits spread over ~1 across 1,000 tokens: at 1.0 every sample is a near-uniform draw), and the later rounds
# learn from pairs of their own samples.
ROUNDS = dict(model="tiny:llava-next", dataset="sample:vqa-rad", max_samples="32", rounds="3", max_steps="16",
              save_steps="4", learning_rate="5e-3", loss_type='["sigmoid","sft"]', samples_per_prompt="4",
              sample_temperature="0.1", sample_max_new_tokens="6", mix_dataset_pairs="true",
              per_device_train_batch_size="4", gradient_accumulation_steps="1", eval_generations="0",
              eval_fraction="0.2")


def _kept(output):
    rounds = output / "checkpoints" / "rounds"
    return {f"{r}/{name}": (rounds / str(r) / name).read_text() for r in (1, 2, 3)
            for name in ("drawn.jsonl", "samples.jsonl", "pairs.jsonl")}


def _check_results(output, wandb_dir, rounds):
    """Each round's samples and pairs in the run dir, listed in manifest.json and fingerprinted in its provenance,
    the rounds in report.html, a wandb point a round (offline)."""
    manifest = json.loads((output / "manifest.json").read_text())
    files = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    for r in (1, 2, 3):
        for name in ("samples.jsonl", "pairs.jsonl"):  # the checkpoint dir's copy, as trained on
            kept = output / "checkpoints" / "rounds" / str(r) / name
            assert (output / "rounds" / str(r) / name).read_bytes() == kept.read_bytes()
            assert files[f"rounds/{r}/{name}"] == sha256_file(kept)
        assert manifest["provenance"]["rounds"][str(r)] == {
            "path": f"rounds/{r}/pairs.jsonl", "pairs": rounds[r - 1]["pairs"],
            "sha256": files[f"rounds/{r}/pairs.jsonl"]}
    html = (output / "report.html").read_text()
    assert 'id="rounds"' in html and html.count('<tr class="round">') == 3
    [run_file] = wandb_dir.glob("wandb/offline-run-*/*.wandb")
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(run_file) if record.WhichOneof("record_type") == "history"]
    points = [{key: value for key, value in row.items() if key.startswith("round")} for row in rows if "round" in row]
    assert [point["round"] for point in points] == [1, 2, 3]
    assert [point["round/pairs"] for point in points] == [r["pairs"] for r in rounds]
    assert [point["round/mean_score"] for point in points] == [r["mean_score"] for r in rounds]


@pytest.mark.slow
def test_rounds_learn_on_policy_and_a_kill_in_round_2_resumes_to_the_same_adapter(tmp_path, cache_dir):
    whole, wandb_dir = tmp_path / "whole", tmp_path / "wandb"
    done = run_job({**job_env(cache_dir, whole, **ROUNDS, report_to="wandb"), "WANDB_MODE": "offline",
                    "WANDB_DIR": str(wandb_dir), "WANDB_PROJECT": "dpo-job-test", "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = json.loads((whole / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    _check_results(whole, wandb_dir, rounds)
    prompts = json.loads((whole / "data_report.json").read_text())["train_pairs"]  # every training prompt sampled
    assert all(r["prompts"] == prompts and r["samples"] == prompts * 4 for r in rounds)
    first = [json.loads(line) for line in _kept(whole)["1/samples.jsonl"].splitlines()]
    assert len(first) == prompts and all(len(record["samples"]) == 4 == len(record["scores"]) for record in first)
    scores = [r["mean_score"] for r in rounds]
    assert scores[0] < scores[2] and rounds[2]["pairs"] > 0, rounds  # the loop learns from its own samples

    killed = tmp_path / "killed"
    env = job_env(cache_dir, killed, **ROUNDS)
    process = start_job(env)
    wait_for(killed / "checkpoints" / "rounds" / "2" / "checkpoints" / "checkpoint-4" / checkpoints.COMPLETE_MARKER,
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


def test_a_base_reference_makes_trls_ref_adapter_compute_the_base_model():
    """DPO_ROUND_REFERENCE=base: the frozen "ref" copy TRL adds (of a policy trained in earlier rounds) computes what
    the model without adapters computes, LoRA layers and a module trained in full alike."""
    import torch
    from peft import LoraConfig, get_peft_model

    from entrypoint.training.trainer import use_base_as_reference

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.proj(x))

    torch.manual_seed(0)
    config = LoraConfig(r=2, target_modules=["proj"], modules_to_save=["head"], init_lora_weights=False)
    model = get_peft_model(Two(), config)
    model.add_adapter("ref", config)
    with torch.no_grad():  # the policy after a round: B not zero, the head trained
        for name, param in model.named_parameters():
            if ".default." in name:
                param.add_(torch.randn_like(param))
                model.get_parameter(name.replace(".default.", ".ref.")).copy_(param)
    x = torch.randn(5, 4)
    model.set_adapter("ref")
    before = model(x)
    with model.disable_adapter():
        base = model(x)
    assert not torch.allclose(before, base)
    use_base_as_reference(model)
    model.set_adapter("ref")
    assert torch.equal(model(x), base)
    model.set_adapter("default")
    assert torch.allclose(model(x), before)  # the policy itself untouched


@pytest.mark.slow
def test_a_round_without_pairs_exits_65_and_keeps_its_samples(tmp_path, cache_dir):
    """The random tiny model's answers all score 0 on their own: round 1 has nothing to train on. That is found only
    once the model has answered, so not exit 2 (before any model is loaded) but 65, the message naming the settings
    that change it; the samples stay for a look."""
    output = tmp_path / "out"
    settings = {**ROUNDS, "rounds": "1", "mix_dataset_pairs": "false", "sample_temperature": "1.0"}
    result = run_job(job_env(cache_dir, output, **settings))
    assert result.returncode == 65, result.stderr[-3000:]
    assert "round 1: no pairs" in result.stderr and "DPO_MIX_DATASET_PAIRS=true" in result.stderr
    kept = output / "checkpoints" / "rounds" / "1" / "samples.jsonl"
    assert all(set(json.loads(line)["scores"]) == {0.0} for line in kept.read_text().splitlines())


def test_a_rounds_trainer_is_gone_before_the_next_round_loads_its_model(monkeypatch, tmp_path):
    """Every round loads the base again: the previous round's trainer (its model and optimizer state) must not be
    held while it does, or the GPU holds two policies the memory plan never counted."""
    import weakref

    from entrypoint.onpolicy import rounds
    from entrypoint.run.state import RunState

    class Trainer:  # stands for a round's JobDPOTrainer
        pass

    alive_at_start = []
    last = []

    def one_round(*args):
        alive_at_start.append(bool(last) and last[-1]() is not None)
        trainer = Trainer()
        last.append(weakref.ref(trainer))
        return trainer, "result", None, {"heldout_base": None, "round": args[11], "prompts": 1, "pairs": 1,
                                         "mean_score": 0.0, "heldout_mean_score": None}

    monkeypatch.setattr(rounds, "_round", one_round)
    settings = settings_from(monkeypatch, DPO_ROUNDS="3", DPO_OUTPUT_DIR=str(tmp_path))
    state = RunState.open(tmp_path / "checkpoints", settings, writer=True)
    outcome = rounds.run_rounds(settings, tmp_path / "checkpoints", None, None, None, None, None, state, True, 0, 1,
                                None)
    assert alive_at_start == [False, False, False]
    assert last[-1]() is outcome.trainer and [r["round"] for r in outcome.rounds] == [1, 2, 3]


def test_a_journal_keeps_what_was_synced_and_drops_a_line_a_kill_cut_off(tmp_path):
    from entrypoint.onpolicy.journal import Journal

    path = tmp_path / "samples.partial.jsonl"
    journal = Journal(path)
    journal.add(3, [{"score": 1.0}])
    journal.add(0, [{"score": -2.0}])
    with path.open("a") as file:  # a kill -9 in the middle of the next write
        file.write('{"prompt": 1, "record": [{"sco')
    again = Journal(path)
    assert again.done == {3: [{"score": 1.0}], 0: [{"score": -2.0}]}  # prompt 1 is judged again
    again.add(1, [{"score": 0.5}])
    assert Journal(path).done == {3: [{"score": 1.0}], 0: [{"score": -2.0}], 1: [{"score": 0.5}]}


def test_the_tokens_generated_count_each_row_up_to_and_with_its_first_end_of_sequence():
    import torch

    from entrypoint.onpolicy.sample import generated_tokens

    rows = torch.tensor([[5, 6, 2, 0, 0], [7, 8, 9, 10, 11], [2, 0, 0, 0, 0]])  # 2 ends a sequence, 0 pads
    assert generated_tokens(rows, 2) == 3 + 5 + 1
    assert generated_tokens(rows, [2, 11]) == 3 + 5 + 1  # several end tokens (a chat model's turn end too)
    assert generated_tokens(rows, [9]) == 5 + 3 + 5
