"""An OpenAI-compatible chat endpoint on loopback (vLLM's routes), for the `openai` sampler and judge: answers
derived from each request, vLLM's dynamic LoRA loading, failures on demand, and a log of every request received.

- `POST /v1/chat/completions`: for the judge's model (`judge_model`), one choice, `judge_reply(request)` (by
  default "Score: N" with N from a hash of the request's last text, so scores vary and pairs form); for any other
  model, `n` choices `answer <seed>-<k>` (one only with `ignore_n`, as servers that ignore `n` do);
- `POST /v1/load_lora_adapter`: records `{"lora_name", "lora_path"}`; a name loaded before is vLLM's 400;
- `fail_first` requests (any route) answered `fail_status`, or all of them with `fail_always`; 429 and 5xx carry
  `retry-after-ms` so the client's retries take milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loopback import answer, request_body


def last_text(request: dict[str, Any]) -> str:
    content = request["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if p["type"] == "text")


def hashed_score(request: dict[str, Any]) -> str:
    digest = hashlib.sha256(last_text(request).encode()).digest()
    return f"The answer is judged.\nScore: {digest[0] % 11}"


@dataclass
class OpenAIServer:
    judge_model: str = "judge"
    judge_reply: Callable[[dict[str, Any]], str] = hashed_score
    ignore_n: bool = False
    fail_first: int = 0
    fail_status: int = 500
    fail_always: bool = False
    url: str = ""
    # every request received, failed ones too: {"path", "body", "headers" (names in lowercase), "status"}
    requests: list[dict[str, Any]] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chats(self, model: str | None = None) -> list[dict[str, Any]]:
        """The chat requests answered (not failed), for `model` or all."""
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions" and r["status"] == 200
                and (model is None or r["body"]["model"] == model)]

    def respond(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/load_lora_adapter":
            return self.load(body)
        if path != "/v1/chat/completions":
            return 404, error(f"no route {path}", 404)
        if body["model"] == self.judge_model:
            return 200, completion(body["model"], [self.judge_reply(body)])
        n = 1 if self.ignore_n else body.get("n") or 1
        return 200, completion(body["model"], [f"answer {body.get('seed')}-{k}" for k in range(n)])

    def load(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if any(done["lora_name"] == body["lora_name"] for done in self.loads):
            return 400, error(f"The lora adapter '{body['lora_name']}' has already been loaded.", 400)
        self.loads.append(body)
        return 200, {}

    def status_now(self) -> int:
        """The failure this request gets, or 200."""
        failed = sum(1 for r in self.requests if r["status"] != 200)
        return self.fail_status if self.fail_always or failed < self.fail_first else 200


def completion(model: str, texts: list[str]) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        for k, text in enumerate(texts)],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def error(message: str, code: int) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": code}


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(request_body(self) or b"{}")
            with server.lock:
                status = server.status_now()
                if status == 200:
                    status, reply = server.respond(self.path, body)
                else:
                    reply = error(f"injected failure {status}", status)
                headers = {key.lower(): value for key, value in self.headers.items()}
                server.requests.append({"path": self.path, "body": body, "headers": headers, "status": status})
            framing = [("Content-Type", "application/json")]
            if status == 429 or status >= 500:
                framing.append(("retry-after-ms", "10"))
            answer(self, status, framing, json.dumps(reply).encode())

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def openai_server(**options: Any) -> Iterator[OpenAIServer]:
    """A running server (options: OpenAIServer's fields); `.url` is its base URL, ending in /v1."""
    state = OpenAIServer(**options)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
