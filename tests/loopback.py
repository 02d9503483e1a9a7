"""HTTP on loopback for the test servers (the S3 fault proxy, the fake Hub): a request's body as the client sent
it, chunked or not, and an answer whose framing headers are this server's own."""

from __future__ import annotations

from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler

FRAMING = ("transfer-encoding", "content-length", "connection")  # set here, never copied from another answer


def request_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" not in handler.headers.get("Transfer-Encoding", ""):
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    parts = []
    while size := int(handler.rfile.readline().split(b";")[0], 16):
        parts.append(handler.rfile.read(size))
        handler.rfile.readline()  # the CRLF after each chunk
    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, up to the blank line
        pass
    return b"".join(parts)


def answer(handler: BaseHTTPRequestHandler, status: int, headers: Iterable[tuple[str, str]], body: bytes,
           length: int | str | None = None) -> None:
    """Status, `headers` but the framing ones, Content-Length (`length`, else the body's), then the body (none for
    HEAD, whose Content-Length tells the length of what a GET would send)."""
    handler.send_response(status)
    for key, value in headers:
        if key.lower() not in FRAMING:
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
