"""HTTP hooks (tusd's -hooks-http) against a real HTTP server on 127.0.0.1: events and rejection, retries, limits."""

from __future__ import annotations

import json

import pytest

from pytusd.hooks import Hooks

from tests.conftest import TUS, create


# -- HTTP hooks against a real HTTP server on 127.0.0.1 ------------------------------------------------------------


class HookServer:
    """A small HTTP hook receiver on 127.0.0.1: records (headers with the path, JSON body) of every POST and answers
    with ``respond(path, body) -> (status, answer)``, by default from a script of answers, one per call."""

    def __init__(self, answers=None, respond=None):
        import http.server
        import threading

        self.requests: list[tuple[dict, dict]] = []
        self.answers = list(answers or [])
        respond = respond or (lambda path, body: self.answers.pop(0) if self.answers else (200, ""))
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers, path=self.path), body))
                status, answer = respond(self.path, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_server():
    servers = []

    def make(answers=None):
        server = HookServer(answers)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


async def test_http_hooks_events_and_rejection(client_factory, hook_server):
    from pytusd.hooks import HttpHookBackend

    server = hook_server([(200, {"rejectUpload": True, "httpResponse": {"statusCode": 409, "body": "duplicate"}})])
    hooks = Hooks(HttpHookBackend(server.url, forward_headers=["Authorization"], backoff=0.01),
                  ("pre-create", "post-create"))
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Authorization": "Bearer t"})
    assert r.status_code == 409 and r.text == "duplicate"
    url = await create(client, 1, Authorization="Bearer t")
    await hooks.drain()
    kinds = [(h.get("Hook-Name"), b["Type"]) for h, b in server.requests]
    assert kinds == [("pre-create", "pre-create"), ("pre-create", "pre-create"), ("post-create", "post-create")]
    assert all(h.get("Authorization") == "Bearer t" for h, _ in server.requests)
    assert "Idempotency-Key" not in server.requests[0][0] and len(server.requests[2][0]["Idempotency-Key"]) == 32
    assert server.requests[2][1]["Event"]["Upload"]["ID"] == url.rsplit("/", 1)[1]


async def test_http_hook_retries_5xx_then_fails_on_4xx(client_factory, hook_server):
    from pytusd.hooks import HttpHookBackend

    server = hook_server([(503, ""), (500, ""), (200, {"ChangeFileInfo": {"MetaData": {"a": "b"}}}), (404, "")])
    hooks = Hooks(HttpHookBackend(server.url, retry=3, backoff=0.01), ("pre-create",))
    client = client_factory(hooks=hooks)
    url = await create(client, 1)
    assert (await client.head(url)).headers["upload-metadata"] == "a Yg=="
    assert len(server.requests) == 3
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and len(server.requests) == 4  # 404 is not retried


async def test_http_hook_limits(client_factory, hook_server):
    from pytusd.hooks import HttpHookBackend

    server = hook_server([(200, {"x": "y" * 100}), (200, "not json")])
    hooks = Hooks(HttpHookBackend(server.url, size_limit=50, backoff=0.01), ("pre-create",))
    client = client_factory(hooks=hooks)
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status_code == 500
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status_code == 500
    hooks = Hooks(HttpHookBackend("http://127.0.0.1:9/unreachable", retry=1, backoff=0.01), ("pre-create",))
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500
