"""A fake Hugging Face Hub: the calls HfApi makes to create a repo and commit a folder, answered as the Hub
answers them, in process (httpx2's MockTransport) or over HTTP on loopback (`serve`, for a job in a subprocess
and for hf_xet, whose Rust client makes its own requests).

Like the Hub, the preupload step answers "lfs" for binary and large files (every .safetensors, PNG and JPEG)
and "regular" for small text. huggingface_hub then sends LFS files through one of two protocols:
- Xet (the default, with hf_xet installed, as in the image): a write token from the Hub, then the file's chunks
  in xorbs and a shard to the CAS service (here the same server, under /cas);
- the LFS batch API with basic transfer (HF_HUB_DISABLE_XET=1): one PUT of the whole file, then a verify call.
Either way the commit names each LFS file by sha256 and size; a regular file's bytes are in the commit itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import yaml
from loopback import answer, request_body

TOKEN = "hf_canaryWriteToken0123"
LFS_LIMIT = 10 * 2**20  # the Hub sends any file over 10 MiB through LFS, text or not
XORB_CHUNK_HEADER = struct.Struct("<B3sB3s")  # version, compressed length, compression scheme, uncompressed length


def xorb_uncompressed_bytes(body: bytes) -> int:
    """The bytes of file content a serialized xorb (uploaded without its footer) carries: the sum of its chunks'
    uncompressed lengths, read from each chunk's 8-byte header."""
    total, offset = 0, 0
    while offset < len(body):
        _, compressed, _, uncompressed = XORB_CHUNK_HEADER.unpack_from(body, offset)
        offset += XORB_CHUNK_HEADER.size + int.from_bytes(compressed, "little")
        total += int.from_bytes(uncompressed, "little")
    assert offset == len(body), "a xorb that does not end at a chunk boundary"
    return total


class FakeHub:
    """Answers whoami, create_repo, preupload, LFS (batch, upload, verify), Xet (token, CAS) and commit; records
    the requests, the repos created, the LFS objects stored and the commits."""

    def __init__(self, role: str = "write", token: str = TOKEN):
        self.role, self.token = role, token
        self.url = "https://huggingface.co"  # what `serve` replaces with its loopback address
        self.requests: list[httpx2.Request] = []
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, from basic transfers
        self.xorb_bytes = 0  # file content that reached the CAS in xorbs
        self.shards = 0
        self.upload_modes: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        with self.lock:
            self.requests.append(request)
        path = request.url.path
        if path.startswith("/cas/"):
            return self._cas(request, path.removeprefix("/cas"))
        if path.startswith("/lfs-objects/"):
            return self._lfs_object(request, path.removeprefix("/lfs-objects/"))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx2.Response(401, json={"error": "Invalid credentials in Authorization header"})
        if path == "/api/whoami-v2":
            return httpx2.Response(200, json={"name": "me", "auth": {"accessToken": {"role": self.role}}})
        if path == "/api/repos/create":
            self.created.append(json.loads(request.content))
            return httpx2.Response(200, json={"url": f"{self.url}/org/model"})
        if path == "/api/validate-yaml":
            yaml.safe_load(json.loads(request.content)["content"].split("---")[1])  # the card's front matter parses
            return httpx2.Response(200, json={})
        if path.endswith("/preupload/main"):
            return self._preupload(request)
        if path.endswith(".git/info/lfs/objects/batch"):
            return self._lfs_batch(request)
        if re.search(r"/xet-write-token/main$", path):
            expires = int(time.time()) + 3600
            headers = {"X-Xet-Cas-Url": f"{self.url}/cas", "X-Xet-Access-Token": "xet-write-token",
                       "X-Xet-Token-Expiration": str(expires)}
            return httpx2.Response(200, headers=headers, json={"casUrl": f"{self.url}/cas",
                                                               "accessToken": "xet-write-token", "exp": expires})
        if path.endswith("/commit/main"):
            self.commits.append(self._commit(request))
            return httpx2.Response(200, json={"commitUrl": f"{self.url}/org/model/commit/abc", "commitOid": "a" * 40})
        return httpx2.Response(404, json={"error": f"not found: {request.method} {path}"})

    def _preupload(self, request: httpx2.Request) -> httpx2.Response:
        answers = []
        for entry in json.loads(request.content)["files"]:
            sample = base64.b64decode(entry["sample"])
            lfs = entry["size"] > LFS_LIMIT or b"\x00" in sample or entry["path"].endswith((".png", ".jpg"))
            self.upload_modes[entry["path"]] = "lfs" if lfs else "regular"
            answers.append({"path": entry["path"], "uploadMode": self.upload_modes[entry["path"]],
                            "shouldIgnore": False})
        return httpx2.Response(200, json={"files": answers})

    def _lfs_batch(self, request: httpx2.Request) -> httpx2.Response:
        payload = json.loads(request.content)
        assert payload["operation"] == "upload" and "basic" in payload["transfers"]
        objects = []
        for item in payload["objects"]:
            href = f"{self.url}/lfs-objects/{item['oid']}"
            actions = None if item["oid"] in self.lfs_objects else {
                "upload": {"href": href, "header": {}}, "verify": {"href": f"{href}/verify", "header": {}}}
            objects.append({"oid": item["oid"], "size": item["size"], **({"actions": actions} if actions else {})})
        return httpx2.Response(200, json={"transfer": "basic", "objects": objects})

    def _lfs_object(self, request: httpx2.Request, rest: str) -> httpx2.Response:
        oid = rest.removesuffix("/verify")
        if request.method == "PUT":
            content = request.read()
            if hashlib.sha256(content).hexdigest() != oid:
                return httpx2.Response(400, json={"error": "content does not match its oid"})
            with self.lock:
                self.lfs_objects[oid] = content
            return httpx2.Response(200)
        if rest.endswith("/verify"):
            return httpx2.Response(200 if oid in self.lfs_objects else 404, json={})
        return httpx2.Response(404, json={})

    def _cas(self, request: httpx2.Request, path: str) -> httpx2.Response:
        if request.headers.get("authorization") != "Bearer xet-write-token":
            return httpx2.Response(401, json={"error": "no xet token"})
        if path.startswith("/v1/chunks/"):
            return httpx2.Response(404)  # global deduplication: no chunk is known already
        if request.method == "POST" and path.startswith("/v1/xorbs/"):
            with self.lock:
                self.xorb_bytes += xorb_uncompressed_bytes(request.read())
            return httpx2.Response(200, json={"was_inserted": True})
        if request.method == "POST" and path in ("/v1/shards", "/shards"):
            with self.lock:
                self.shards += 1
            return httpx2.Response(200, json={"result": 1})
        return httpx2.Response(404, json={"error": f"not found: CAS {request.method} {path}"})

    @staticmethod
    def _commit(request: httpx2.Request) -> dict:
        lines = [json.loads(line) for line in request.content.decode().splitlines()]
        files = {e["value"]["path"]: base64.b64decode(e["value"]["content"]) for e in lines if e["key"] == "file"}
        lfs = {e["value"]["path"]: {"sha256": e["value"]["oid"], "size": e["value"]["size"]}
               for e in lines if e["key"] == "lfsFile"}
        return {"path": request.url.path, "message": lines[0]["value"]["summary"], "files": files, "lfs": lfs,
                "authorization": request.headers.get("authorization")}


@contextlib.contextmanager
def serve(fake: FakeHub) -> Iterator[str]:
    """The fake over HTTP on loopback; yields its URL (for HF_ENDPOINT)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _answer(self) -> None:
            request = httpx2.Request(self.command, f"{fake.url}{self.path}", headers=dict(self.headers.items()),
                                     content=request_body(self))
            response = fake(request)
            answer(self, response.status_code, response.headers.items(), response.read())

        do_GET = do_POST = do_PUT = do_HEAD = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake.url
    finally:
        server.shutdown()
        server.server_close()
