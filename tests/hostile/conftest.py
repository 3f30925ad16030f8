"""Shared by the hostile-client tests: the real ``pytusd`` process of tests/e2e (one per test, stopped by its PID),
and one request straight into an ASGI app with exactly the header bytes given."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import pytusd_factory  # noqa: F401  (a fixture, for the tests of this folder)


async def asgi(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
               ) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request into ``app`` with exactly these header bytes, which an HTTP client
    would refuse to send (control characters, lengths that are not numbers); ``Host: tus.test`` comes first."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"tus.test"), *[(k.lower(), v) for k, v in headers]],
             "client": ("127.0.0.1", 1234), "server": ("tus.test", 80)}
    await app(scope, receive, send)
    start = sent[0]
    return (start["status"], {k.decode(): v.decode("latin-1") for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))
