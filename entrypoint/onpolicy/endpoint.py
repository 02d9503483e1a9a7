"""The `openai` sampler and judge (DPO_SAMPLER=openai, DPO_JUDGE=openai): an OpenAI-compatible chat endpoint, e.g.
vLLM, draws the rounds' answers and scores them, so the job's GPU trains while a serving engine generates.

Requests go through the official `openai` client, whose retries (DPO_ENDPOINT_RETRIES, exponential backoff, honouring
Retry-After) cover refused connections, timeouts (DPO_ENDPOINT_TIMEOUT_S), 408/409/429 and 5xx answers; a reply that
cannot be read (no answer text, a judge's reply without its score) is asked again, counted against the same retries.
Past them the job stops with EndpointUnavailable (exit 69), naming the setting and the URL; a 401 or 403 stops it at
once, naming the API key's setting (never the key). Every prompt is journalled as it completes (journal.py), so a
restart requests only what is left. DPO_ENDPOINT_CONCURRENCY threads keep that many requests in flight.

Images travel inline, as base64 PNG data URLs in `image_url` parts (the OpenAI vision format), in the order the
row's prompt places its image parts.

Sampling: one request a prompt, `n` = DPO_SAMPLES_PER_PROMPT, seeded per prompt and round (sample.prompt_seed, the
seed the in-process sampler uses); a server that ignores `n` is asked for the missing answers one at a time, with
seed + k for the k-th. Round 1 samples the base (DPO_SAMPLER_MODEL, default DPO_MODEL); a later round's policy is the
base with the previous round's adapter, loaded first through vLLM's dynamic LoRA API (`POST <url>/load_lora_adapter`,
`{"lora_name": "round-<r-1>", "lora_path": ...}`; an adapter the server already holds counts as loaded) and sampled
as model `round-<r-1>`. That needs vLLM started with `--enable-lora` (and a `--max-lora-rank` of at least
DPO_LORA_R) and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and the adapter's path must be readable by the server as the
job sees it: the same machine, or the same volume mounted at the same path. vLLM's LoRA covers the language model's
linear layers; an adapter that also trains the vision side may be refused. The names are per round, not per run: one
server serves one run at a time.

Judging: one request a sample at temperature 0, JUDGE_PROMPT with the row's images, its question and the answer; the
last `Score: N` of the reply, clamped to 0-10, over 10.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from entrypoint.config.settings import JobSettings
from entrypoint.data.formats import message_text
from entrypoint.errors import ConfigError, EndpointUnavailable
from entrypoint.logs import progress
from entrypoint.onpolicy.journal import Journal
from entrypoint.onpolicy.sample import prompt_seed

if TYPE_CHECKING:
    from openai import OpenAI

log = logging.getLogger("entrypoint.endpoint")
T = TypeVar("T")

# The judge's instruction, after the row's images: the question and one candidate answer, rated 0-10 for correctness
# and for faithfulness to the image (no hallucinated objects, what RLAIF-V's feedback targets). The score comes last,
# so a judge that reasons first still ends with it; the row's reference answer is not shown: the image is the truth.
JUDGE_PROMPT = """You are grading an answer to a question about the image above (if there is none, about the question \
alone).

Question: {question}

Answer: {answer}

Rate the answer from 0 to 10 for its correctness (does it answer the question rightly?) and its faithfulness to the \
image (does it say only what the image shows?): 10 for a correct answer that claims nothing the image does not show, \
0 for a wrong answer or one that describes what is not there. Explain briefly, then end with a line "Score: N"."""
JUDGE_MAX_TOKENS = 1024  # room for the brief explanation before the score
SCORE = re.compile(r"score\s*\**\s*:\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)  # "Score: 7", "**Score:** 7"
NO_KEY = "EMPTY"  # what the client sends when no key is set (vLLM's convention); never OPENAI_API_KEY from the env
KEPT = "the prompts finished are kept: run the job again to go on from there"
RETRIED = (408, 409, 429)  # and 5xx: the statuses the client retries


class Unreadable(Exception):
    """A reply that came back but does not say what was asked (no answer text, no score)."""


def check_endpoint_settings(settings: JobSettings) -> None:
    """ConfigError (exit 2) naming what an `openai` sampler or judge lacks, before any model loads."""
    needed = []
    if settings.sampler == "openai":
        needed.append(("DPO_SAMPLER_URL", settings.sampler_url, "DPO_SAMPLER=openai"))
    if settings.judge == "openai":
        needed += [("DPO_JUDGE_URL", settings.judge_url, "DPO_JUDGE=openai"),
                   ("DPO_JUDGE_MODEL", settings.judge_model, "DPO_JUDGE=openai (the model name at the endpoint)")]
    missing = [f"{name} ({why})" for name, value, why in needed if not value]
    if missing:
        raise ConfigError(f"set {', '.join(missing)}")
    for name, url in (("DPO_SAMPLER_URL", settings.sampler_url), ("DPO_JUDGE_URL", settings.judge_url)):
        if url and not re.match(r"https?://", url):
            raise ConfigError(f"{name} must be an http:// or https:// URL, e.g. http://localhost:8000/v1; got {url}")


@dataclass
class Endpoint:
    """One endpoint's client and the settings that name it in messages."""

    client: OpenAI
    url: str
    url_setting: str  # DPO_SAMPLER_URL, DPO_JUDGE_URL
    key_setting: str  # DPO_SAMPLER_API_KEY, DPO_JUDGE_API_KEY
    key: str | None
    retries: int

    def unavailable(self, error: Any) -> EndpointUnavailable:
        status = getattr(error, "status_code", None)
        retried = status is None or status in RETRIED or status >= 500  # else the server rejected what was asked
        what = f"failed after {self.retries} retries (DPO_ENDPOINT_RETRIES)" if retried else "rejected the request"
        return EndpointUnavailable(f"{self.url_setting} {self.url} {what}: {self._said(error)}; {KEPT}")

    def refused(self, error: Any) -> EndpointUnavailable:
        return EndpointUnavailable(f"{self.url_setting} {self.url} refused the job's credentials "
                                   f"({getattr(error, 'status_code', '')}): check {self.key_setting}; {KEPT}")

    def _said(self, error: Any) -> str:
        """The error (and its cause: "Connection error." says little alone) in one line of at most 300 characters,
        the key masked wherever the server echoed it."""
        cause = error.__cause__
        text = " ".join(f"{error} ({cause})".split() if cause and str(cause) else str(error).split())
        if self.key and len(self.key) >= 4:
            text = text.replace(self.key, "***")
        return text[:300]

    def ask(self, read: Callable[[Any], T], **request: Any) -> T:
        """`read` of a chat completion's reply; the client retries failed requests, this an unreadable reply."""
        import openai

        unreadable: Unreadable | None = None
        for _ in range(self.retries + 1):
            try:
                reply = self.client.chat.completions.create(**request)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise self.refused(error) from None
            except openai.OpenAIError as error:
                raise self.unavailable(error) from None
            try:
                return read(reply)
            except Unreadable as error:
                unreadable = error
        raise self.unavailable(unreadable)

    def load_lora(self, name: str, path: Path) -> None:
        """vLLM's dynamic LoRA load; an adapter of that name already loaded (a restarted round) is fine."""
        import httpx2
        import openai

        try:
            self.client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": str(path)},
                             cast_to=httpx2.Response)
        except openai.BadRequestError as error:
            if "already" not in str(error).lower():
                raise self._not_loaded(name, path, error) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise self.refused(error) from None
        except openai.OpenAIError as error:
            raise self._not_loaded(name, path, error) from None
        log.info("%s: adapter %s loaded from %s", self.url, name, path)

    def _not_loaded(self, name: str, path: Path, error: Any) -> EndpointUnavailable:
        return EndpointUnavailable(
            f"{self.url_setting} {self.url} did not load adapter {name} from {path}: {self._said(error)} (vLLM needs "
            f"--enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and the path readable on its side); {KEPT}")

    def close(self) -> None:
        self.client.close()


def endpoint(settings: JobSettings, role: str) -> Endpoint:
    """The sampler's or the judge's endpoint (`role`: "sampler", "judge"), with the client's retries and timeout."""
    from openai import OpenAI

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # its line a request would drown the job's log
    url, key = getattr(settings, f"{role}_url"), getattr(settings, f"{role}_api_key")
    client = OpenAI(base_url=url, api_key=key or NO_KEY, max_retries=settings.endpoint_retries,
                    timeout=settings.endpoint_timeout_s)
    prefix = f"DPO_{role.upper()}"
    return Endpoint(client, url, f"{prefix}_URL", f"{prefix}_API_KEY", key, settings.endpoint_retries)


# --- messages ---------------------------------------------------------------------------------------------------


def data_url(image: Any) -> str:
    """A PIL image as a base64 PNG data URL (RGB, as the models' processors take it)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _part(part: dict[str, Any], images: Any) -> dict[str, Any]:
    if part["type"] == "image":
        return {"type": "image_url", "image_url": {"url": data_url(next(images))}}
    return {"type": "text", "text": part["text"]}


def chat_messages(prompt: list[dict[str, Any]], images: Sequence[Any]) -> list[dict[str, Any]]:
    """A row's prompt in the OpenAI chat format: string content as it is, parts in order, each image part the next
    of the row's images."""
    pending = iter(images)
    return [{"role": message["role"], "content": message["content"] if isinstance(message["content"], str)
             else [_part(part, pending) for part in message["content"]]} for message in prompt]


def judge_messages(row: dict[str, Any], answers: Sequence[str]) -> list[list[dict[str, Any]]]:
    """For each of `answers` one user turn: the row's images (encoded once), then JUDGE_PROMPT with the row's
    question and that answer."""
    images = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in row.get("images") or []]
    question = message_text(row["prompt"])
    return [[{"role": "user", "content": [*images, {"type": "text", "text": JUDGE_PROMPT.format(
        question=question, answer=answer)}]}] for answer in answers]


# --- replies ----------------------------------------------------------------------------------------------------


def answers(reply: Any) -> list[str]:
    """Every choice's text, stripped; Unreadable when there is none or one has no text."""
    choices = getattr(reply, "choices", None)
    texts = [getattr(getattr(choice, "message", None), "content", None) for choice in choices or []]
    if not texts or not all(isinstance(text, str) for text in texts):
        raise Unreadable(f"a reply without answers: {' '.join(str(reply).split())[:200]!r}")
    return [text.strip() for text in texts]


def judge_score(reply: Any) -> float:
    """The last `Score: N` of the judge's reply, clamped to 0-10, over 10."""
    [text] = answers(reply)[:1]
    found = SCORE.findall(text)
    if not found:
        raise Unreadable(f"a judge's reply without a 'Score: N' line: {' '.join(text.split())[:200]!r}")
    return min(max(float(found[-1]), 0.0), 10.0) / 10


# --- work -------------------------------------------------------------------------------------------------------


def each_prompt(work: Callable[[int], Any], indices: Sequence[int], workers: int, what: str) -> None:
    """`work(index)` for every index on `workers` threads; after the first failure no other index starts, those in
    flight finish (and keep what they made), and the failure is raised."""
    failed = threading.Event()

    def guarded(index: int) -> None:
        if not failed.is_set():
            try:
                work(index)
            except BaseException:
                failed.set()
                raise

    pool = ThreadPoolExecutor(workers, thread_name_prefix="endpoint")
    try:
        with progress(what, len(indices), "prompts") as advance:
            for future in as_completed([pool.submit(guarded, index) for index in indices]):
                future.result()
                advance(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def draw(source: Endpoint, settings: JobSettings, model: str, messages: list[dict[str, Any]],
         seed: int) -> list[str]:
    """DPO_SAMPLES_PER_PROMPT answers to one prompt: one request for all, then one a missing answer (seed + k)."""
    n = settings.samples_per_prompt
    request = dict(model=model, messages=messages, temperature=settings.sample_temperature,
                   max_tokens=settings.sample_max_new_tokens)
    drawn = source.ask(answers, n=n, seed=seed, **request)[:n]
    while len(drawn) < n:  # a server that ignores `n`
        drawn += source.ask(answers, n=1, seed=(seed + len(drawn)) % 2**63, **request)[:1]
    return drawn


def sample_from_endpoint(settings: JobSettings, prompts: Any, round_: int, adapter: Path | None,
                         journal: Journal) -> list[list[str]]:
    """DPO_SAMPLES_PER_PROMPT answers to every row of `prompts`, in row order, from the endpoint serving the round's
    policy (`adapter`: the previous round's, None in round 1); the prompts `journal` holds are not asked again."""
    source = endpoint(settings, "sampler")
    try:
        model = settings.sampler_model or settings.model
        if adapter is not None:
            model = f"round-{round_ - 1}"
            source.load_lora(model, adapter)

        def one(index: int) -> None:
            row = prompts[index]
            messages = chat_messages(row["prompt"], row.get("images") or [])
            journal.add(index, draw(source, settings, model, messages, prompt_seed(settings.seed, round_, index)))

        todo = [index for index in range(len(prompts)) if index not in journal.done]
        each_prompt(one, todo, settings.endpoint_concurrency, f"round {round_}: sampling from {source.url}")
    finally:
        source.close()
    return [journal.done[index] for index in range(len(prompts))]


class EndpointJudge:
    """DPO_JUDGE=openai (judge.py's Judge): each sample scored by the chat model DPO_JUDGE_MODEL at DPO_JUDGE_URL."""

    name = "openai"

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self._endpoint: Endpoint | None = None  # made when it first scores

    def score(self, rows: Any, samples: Sequence[Sequence[str]],
              journal: Journal | None = None) -> list[list[dict[str, Any]]]:
        if self._endpoint is None:
            self._endpoint = endpoint(self.settings, "judge")
        judge = self._endpoint
        verdicts: dict[int, list[dict[str, Any]]] = dict(journal.done) if journal else {}

        def one(index: int) -> None:
            scored = [{"score": judge.ask(judge_score, model=self.settings.judge_model, temperature=0,
                                          max_tokens=JUDGE_MAX_TOKENS, messages=messages)}
                      for messages in judge_messages(rows[index], samples[index])]
            verdicts[index] = scored
            if journal is not None:
                journal.add(index, scored)

        todo = [index for index in range(len(samples)) if index not in verdicts]
        each_prompt(one, todo, self.settings.endpoint_concurrency, f"judging at {judge.url}")
        return [verdicts[index] for index in range(len(samples))]

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
