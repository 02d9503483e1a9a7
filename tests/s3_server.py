"""A real S3 server on loopback (moto), and a fault-injecting HTTP proxy to put in front of it."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import answer, request_body
from moto.server import ThreadedMotoServer


@contextmanager
def moto_server() -> Iterator[str]:
    """Yields the endpoint URL of a fresh moto S3 server on 127.0.0.1."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in process memory across servers: start every test from nothing.
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("POST", "/moto-api/reset")
    connection.getresponse().read()
    connection.close()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class FaultyProxy:
    """Forwards HTTP to an upstream server; every `every`-th PUT fails, at most `limit` times.

    mode "500": answers 500 InternalError without forwarding; mode "drop": closes the connection
    without an answer; mode "slow": forwards each PUT after `delay` seconds (to kill a client mid-upload);
    mode "log": forwards everything. `log` records every forwarded request in order: method, path, and the
    sequence numbers of its arrival and of its answer from the server.
    """

    def __init__(self, upstream: str, mode: str, every: int = 3, limit: int = 4, delay: float = 0.0):
        self.upstream = upstream.removeprefix("http://")
        self.mode, self.every, self.limit, self.delay = mode, every, limit, delay
        self.puts = self.faults = self.events = 0
        self.log: list[dict] = []
        self.closed = False
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _forward(self) -> None:
                body = request_body(self)
                started = proxy._event()
                if self.command == "PUT" and proxy._should_fail():
                    if proxy.mode == "drop":
                        self.close_connection = True
                        self.connection.close()
                        return
                    if proxy.mode == "500":
                        answer(self, 500, [], b"<Error><Code>InternalError</Code><Message>injected</Message></Error>")
                        return
                if self.command == "PUT" and proxy.mode == "slow":
                    time.sleep(proxy.delay)
                    if proxy.closed:  # the test is over: a late request must not reach the server
                        self.close_connection = True
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                proxy._record(self.command, self.path, started)
                # A HEAD answer tells the object's length, not the (empty) body's.
                answer(self, response.status, response.getheaders(), data,
                       length=response.getheader("Content-Length") if self.command == "HEAD" else None)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _event(self) -> int:
        with self.lock:
            self.events += 1
            return self.events

    def _record(self, method: str, path: str, started: int) -> None:
        with self.lock:
            self.events += 1
            self.log.append({"method": method, "path": path.split("?")[0], "started": started,
                             "finished": self.events})

    def _should_fail(self) -> bool:
        with self.lock:
            self.puts += 1
            if self.mode in ("500", "drop") and self.puts % self.every == 0 and self.faults < self.limit:
                self.faults += 1
                return True
            return False

    def close(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()
