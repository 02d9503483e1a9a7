"""The `openai` sampler and judge (onpolicy/endpoint.py) against a loopback OpenAI-compatible server
(openai_server.py): answers in row order, images as data URLs, a round's adapter loaded once, journalled prompts not
asked again, retries, failures as exit 69 without the key, the judge's score; the settings checked before any model;
and two on-policy rounds of the job end to end, sampled and judged by the server."""

from __future__ import annotations

import base64
import io
import json
import logging
import os

import datasets
import pytest
from openai_server import openai_server
from PIL import Image

from conftest import job_env, run_job, settings_from
from entrypoint.errors import ConfigError, EndpointUnavailable
from entrypoint.onpolicy.endpoint import EndpointJudge, check_endpoint_settings, sample_from_endpoint
from entrypoint.onpolicy.journal import Journal
from entrypoint.onpolicy.sample import prompt_seed

KEY = "sk-test-secret-4242"


def rows(count: int = 4) -> datasets.Dataset:
    """Training rows as the data stage makes them: an image part then the question; the i-th image i px wide."""
    return datasets.Dataset.from_list([{
        "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                 {"type": "text", "text": f"question {i}?"}]}],
        "images": [Image.new("RGB", (8 + i, 8), (i * 40, 0, 0))],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "yes"}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "no"}]}],
    } for i in range(count)])


def settings(monkeypatch, url: str, **env: str):
    """Both endpoints at `url`, 3 samples a prompt, 2 retries, 2 requests in flight; `env`: DPO_* overrides."""
    given = dict(rounds="2", sampler="openai", sampler_url=url, sampler_api_key=KEY, judge="openai", judge_url=url,
                 judge_model="judge", judge_api_key=KEY, samples_per_prompt="3", endpoint_retries="2",
                 endpoint_timeout_s="10", endpoint_concurrency="2")
    return settings_from(monkeypatch, **{f"DPO_{k.upper()}": v for k, v in {**given, **env}.items()})


def image_width(url: str) -> int:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).width


def test_sampling_gives_n_answers_a_prompt_in_row_order_with_the_images_as_data_urls(monkeypatch, tmp_path):
    with openai_server() as server:
        config = settings(monkeypatch, server.url, sample_temperature="0.7", sample_max_new_tokens="9")
        drawn = sample_from_endpoint(config, rows(), 1, None, Journal(tmp_path / "drawn.jsonl"))
    seeds = [prompt_seed(config.seed, 1, i) for i in range(4)]
    assert drawn == [[f"answer {seed}-{k}" for k in range(3)] for seed in seeds]
    requests = sorted(server.chats(), key=lambda r: seeds.index(r["seed"]))
    assert len(requests) == 4  # one a prompt
    for i, request in enumerate(requests):
        assert (request["model"], request["n"], request["temperature"], request["max_tokens"]) == \
            (config.model, 3, 0.7, 9)
        [image, text] = request["messages"][0]["content"]
        assert image["type"] == "image_url" and image_width(image["image_url"]["url"]) == 8 + i
        assert text == {"type": "text", "text": f"question {i}?"}
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert Journal(tmp_path / "drawn.jsonl").done == dict(enumerate(drawn))  # every prompt journalled


def test_a_server_that_ignores_n_is_asked_for_the_missing_answers_with_the_next_seeds(monkeypatch, tmp_path):
    with openai_server(ignore_n=True) as server:
        config = settings(monkeypatch, server.url)
        drawn = sample_from_endpoint(config, rows(1), 1, None, Journal(tmp_path / "drawn.jsonl"))
    seed = prompt_seed(config.seed, 1, 0)
    assert drawn == [[f"answer {seed}-0", f"answer {seed + 1}-0", f"answer {seed + 2}-0"]]
    assert [(r["n"], r["seed"]) for r in server.chats()] == [(3, seed), (1, seed + 1), (1, seed + 2)]


def test_round_2_loads_the_previous_adapter_once_and_samples_from_it(monkeypatch, tmp_path):
    adapter = tmp_path / "rounds" / "1" / "adapter"
    with openai_server() as server:
        config = settings(monkeypatch, server.url, sampler_model="served-base")
        sample_from_endpoint(config, rows(2), 1, None, Journal(tmp_path / "1.jsonl"))
        sample_from_endpoint(config, rows(2), 2, adapter, Journal(tmp_path / "2.jsonl"))
        sample_from_endpoint(config, rows(2), 2, adapter, Journal(tmp_path / "2-again.jsonl"))  # a restart: loaded
    assert server.loads == [{"lora_name": "round-1", "lora_path": str(adapter)}]
    assert [r["model"] for r in server.chats()] == ["served-base"] * 2 + ["round-1"] * 4
    assert [r["status"] for r in server.requests if r["path"] == "/v1/load_lora_adapter"] == [200, 400]


def test_prompts_an_earlier_attempt_journalled_are_not_asked_again(monkeypatch, tmp_path):
    journal = Journal(tmp_path / "drawn.jsonl")
    journal.add(0, ["kept 0a", "kept 0b", "kept 0c"])
    journal.add(2, ["kept 2a", "kept 2b", "kept 2c"])
    with openai_server() as server:
        config = settings(monkeypatch, server.url)
        drawn = sample_from_endpoint(config, rows(), 1, None, Journal(tmp_path / "drawn.jsonl"))
    assert drawn[0] == ["kept 0a", "kept 0b", "kept 0c"] and drawn[2][0] == "kept 2a"
    asked = sorted(r["seed"] for r in server.chats())
    assert asked == sorted(prompt_seed(config.seed, 1, i) for i in (1, 3))  # once each, the others not at all
    assert len(Journal(tmp_path / "drawn.jsonl").done) == 4


@pytest.mark.parametrize("status", [500, 429])
def test_transient_failures_are_retried(monkeypatch, tmp_path, status):
    with openai_server(fail_first=2, fail_status=status) as server:
        config = settings(monkeypatch, server.url, endpoint_concurrency="1")
        drawn = sample_from_endpoint(config, rows(2), 1, None, Journal(tmp_path / "drawn.jsonl"))
    assert len(drawn) == 2 and all(len(group) == 3 for group in drawn)
    assert [r["status"] for r in server.requests] == [status, status, 200, 200]


def test_an_endpoint_that_keeps_failing_stops_the_job_naming_the_url_never_the_key(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # the job's level: the client's retries are logged
    with openai_server(fail_always=True) as server:
        config = settings(monkeypatch, server.url, endpoint_concurrency="1")
        with pytest.raises(EndpointUnavailable) as caught:
            sample_from_endpoint(config, rows(3), 1, None, Journal(tmp_path / "drawn.jsonl"))
    message = str(caught.value)
    assert "DPO_SAMPLER_URL" in message and server.url in message and "500" in message
    assert "kept" in message and "\n" not in message and KEY not in message and KEY not in caplog.text
    assert len(server.requests) == 3  # the first prompt: 1 + DPO_ENDPOINT_RETRIES=2; the queued ones are dropped


def test_a_refused_key_stops_at_once_naming_the_key_setting(monkeypatch, tmp_path):
    with openai_server(fail_always=True, fail_status=401) as server:
        config = settings(monkeypatch, server.url)
        with pytest.raises(EndpointUnavailable) as caught:
            sample_from_endpoint(config, rows(1), 1, None, Journal(tmp_path / "drawn.jsonl"))
    assert "DPO_SAMPLER_API_KEY" in str(caught.value) and KEY not in str(caught.value)
    assert len(server.requests) == 1  # not retried


def test_the_judge_scores_the_last_score_line_over_10_and_asks_again_after_an_unreadable_reply(monkeypatch, tmp_path):
    replies = iter(["I cannot tell.", "Score: 3 at first glance... on reflection\n**Score:** 7"])
    with openai_server(judge_reply=lambda request: next(replies, "Score: 12")) as server:
        config = settings(monkeypatch, server.url)
        judge = EndpointJudge(config)
        with_one = rows(1)
        journal = Journal(tmp_path / "samples.jsonl")
        assert judge.score(with_one, [["yes", "no"]], journal) == [[{"score": 0.7}, {"score": 1.0}]]  # 12 clamped
        assert judge.score(with_one, [["yes", "no"]], Journal(tmp_path / "samples.jsonl")) == \
            [[{"score": 0.7}, {"score": 1.0}]]  # journalled: not asked again
        judge.close()
    judged = server.chats("judge")
    assert len(judged) == 3 and all(r["temperature"] == 0 for r in judged)
    [image, text] = judged[0]["messages"][0]["content"]
    assert image_width(image["image_url"]["url"]) == 8
    assert "question 0?" in text["text"] and "Answer: yes" in text["text"] and "Score: N" in text["text"]


def test_a_judge_that_never_gives_a_score_stops_the_job_quoting_its_reply(monkeypatch):
    with openai_server(judge_reply=lambda request: "The answer looks plausible to me. " * 20) as server:
        judge = EndpointJudge(settings(monkeypatch, server.url))
        with pytest.raises(EndpointUnavailable) as caught:
            judge.score(rows(1), [["yes"]])
    message = str(caught.value)
    assert "DPO_JUDGE_URL" in message and "The answer looks plausible" in message and len(message) < 600
    assert len(server.chats("judge")) == 3  # 1 + DPO_ENDPOINT_RETRIES=2


def test_the_endpoint_settings_are_checked_before_any_model(monkeypatch):
    def checked(**env: str) -> None:
        for key in [key for key in os.environ if key.startswith("DPO_")]:
            monkeypatch.delenv(key)
        check_endpoint_settings(settings_from(monkeypatch, **env))

    def problem(**env: str) -> str:
        with pytest.raises(ConfigError) as caught:
            checked(**env)
        return str(caught.value)

    assert "DPO_SAMPLER_URL" in problem(DPO_SAMPLER="openai")
    judge_only = problem(DPO_JUDGE="openai", DPO_JUDGE_URL="http://localhost:8001/v1")
    assert "DPO_JUDGE_MODEL" in judge_only and "DPO_JUDGE_URL" not in judge_only
    assert "DPO_JUDGE_URL" in problem(DPO_JUDGE="openai", DPO_JUDGE_MODEL="judge")
    assert "http://" in problem(DPO_SAMPLER="openai", DPO_SAMPLER_URL="localhost:8000/v1")
    checked(DPO_SAMPLER="openai", DPO_SAMPLER_URL="http://h:8000/v1", DPO_JUDGE="openai",
            DPO_JUDGE_URL="https://j/v1", DPO_JUDGE_MODEL="j")
    checked()  # the defaults need no endpoint


@pytest.mark.slow
def test_two_rounds_sampled_and_judged_by_an_endpoint(tmp_path, cache_dir):
    output = tmp_path / "run"
    with openai_server() as server:
        env = job_env(cache_dir, output, model="tiny:llava-next", dataset="sample:vqa-rad", max_samples="16",
                      rounds="2", max_steps="2", save_steps="2", samples_per_prompt="4", sample_max_new_tokens="6",
                      mix_dataset_pairs="true", per_device_train_batch_size="4", gradient_accumulation_steps="1",
                      eval_generations="0", eval_fraction="0.2", sampler="openai", sampler_url=server.url,
                      judge="openai", judge_url=server.url, judge_model="judge", endpoint_retries="1")
        done = run_job(env)
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = json.loads((output / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["pairs"] > 0 for r in rounds), rounds
    adapter = output / "checkpoints" / "rounds" / "1" / "adapter"
    assert server.loads == [{"lora_name": "round-1", "lora_path": str(adapter)}]
    prompts = rounds[0]["prompts"]
    assert len(server.chats("tiny:llava-next")) == len(server.chats("round-1")) == prompts  # one request a prompt
