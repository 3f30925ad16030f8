"""Logs and request IDs (pytusd.observe.logs): an ID taken from the request or made, sent back and passed to
hooks; log lines with the ID and the upload's events; the text and JSON formats."""

from __future__ import annotations

import json
import logging

from pytusd.hooks import Hooks, HttpHookBackend, PythonHookBackend
from pytusd.observe import logs

from tests.conftest import TUS, create, patch
from tests.unit.observe.test_metrics import value
from tests.unit.hooks.test_http import HookServer


# -- request IDs -----------------------------------------------------------------------------------------------------


async def test_request_id_is_taken_or_made_and_sent_back(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    made = r.headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    r = await client.head("/files/nope", headers={"X-Request-ID": "bad id\" with=quotes"})
    assert r.status_code == 404 and len(r.headers["x-request-id"]) == 32  # unusable IDs are replaced


def test_made_request_ids_differ_in_forked_workers():
    """Made IDs come from a generator of the process's own, seeded afresh in a forked worker: a worker never
    repeats the IDs its parent (or a sibling) makes."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next IDs, then out
        os.close(read)
        os.write(write, " ".join(logs.new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    parent = [logs.new_request_id() for _ in range(3)]
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in child + parent)
    assert not set(child) & set(parent)
    assert len({logs.new_request_id() for _ in range(10_000)}) == 10_000


async def test_request_id_reaches_http_hooks(client_factory):
    server = HookServer()
    try:
        hooks = Hooks(HttpHookBackend(server.url, backoff=0.01), ("pre-create", "post-create"))
        client = client_factory(hooks=hooks)
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "X-Request-ID": "req-42"})
        assert r.status_code == 201
        made = (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).headers["x-request-id"]
        await hooks.drain()
        by_id: dict[str, list[str]] = {}
        for headers, body in server.requests:
            assert body["Event"]["HTTPRequest"]["Header"]["X-Request-Id"] == [headers["X-Request-ID"]]
            by_id.setdefault(headers["X-Request-ID"], []).append(body["Type"])
        assert by_id == {"req-42": ["pre-create", "post-create"], made: ["pre-create", "post-create"]}
    finally:
        server.close()


async def test_request_id_reaches_python_hooks(client_factory):
    got = []

    async def hook(hook_type, request):
        got.append((hook_type, request["Event"]["HTTPRequest"]["Header"].get("X-Request-Id")))

    hooks = Hooks(PythonHookBackend(hook), ("post-create", "post-finish"))
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "0"})
    await hooks.drain()
    rid = r.headers["x-request-id"]
    assert sorted(got) == [("post-create", [rid]), ("post-finish", [rid])]


async def test_log_lines_carry_the_request_id_and_upload_events(client, caplog):
    with caplog.at_level(logging.INFO, "pytusd"):
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "2", "X-Request-ID": "create-1"})
        url = r.headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        await patch(client, url, 0, b"ok", **{"X-Request-ID": "patch-1"})
        await client.delete(url, headers={**TUS, "X-Request-ID": "delete-1"})
    records = [rec for rec in caplog.records if rec.name.startswith("pytusd")]
    assert records and all(rec.request_id in ("create-1", "patch-1", "delete-1") for rec in records)
    events = {(rec.fields.get("event"), rec.request_id) for rec in records if getattr(rec, "fields", None)}
    assert {("UploadCreated", "create-1"), ("RequestCompleted", "create-1"), ("UploadFinished", "patch-1"),
            ("RequestCompleted", "patch-1"), ("UploadTerminated", "delete-1")} <= events
    uploads = [rec for rec in records if rec.fields.get("event", "").startswith("Upload")]
    assert uploads and all(rec.fields["upload_id"] == upload_id for rec in uploads)
    done = [rec for rec in records if rec.fields.get("event") == "RequestCompleted"]
    assert [rec.fields["status"] for rec in done] == [201, 204, 204]
    assert logs.current_request_id() is None  # reset after the request


async def test_interrupted_upload_is_logged(client, caplog):
    app = client.app
    url = await create(client, 10)
    path = "/files/" + url.rsplit("/", 1)[1]
    messages = [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PATCH", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"tus-resumable", b"1.0.0"), (b"upload-offset", b"0"), (b"content-length", b"10"),
                    (b"content-type", b"application/offset+octet-stream"), (b"x-request-id", b"cut-1"),
                    (b"host", b"tus.test")],
        "client": ("127.0.0.1", 1), "server": ("tus.test", 80),
    }
    with caplog.at_level(logging.INFO, "pytusd"):
        await app(scope, receive, send)
    [line] = [rec for rec in caplog.records if getattr(rec, "fields", {}).get("event") == "UploadInterrupted"]
    assert line.fields["upload_id"] == url.rsplit("/", 1)[1] and line.fields["offset"] == 3
    assert line.fields["reason"] == "ERR_UNEXPECTED_EOF" and line.request_id == "cut-1"
    assert value(app, "tusd_bytes_received") == 3
    assert value(app, "tusd_errors_total", code="ERR_UNEXPECTED_EOF") == 1


def make_record(**fields) -> logging.LogRecord:
    record = logging.LogRecord("pytusd", logging.INFO, __file__, 1, "upload %s created", ("u1",), None)
    record.fields = fields
    return record


def test_text_and_json_formats():
    token = logs.request_id_var.set("r-1")
    try:
        record = make_record(event="UploadCreated", upload_id="u1", size=5, path="/a b")
        logs.RequestIdFilter().filter(record)
    finally:
        logs.request_id_var.reset(token)
    text = logs.TextFormatter().format(record)
    assert text.endswith(
        ' level=INFO msg="upload u1 created" event=UploadCreated upload_id=u1 size=5 path="/a b" request_id=r-1'
    )
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["msg"] == "upload u1 created" and entry["request_id"] == "r-1"
    assert entry["event"] == "UploadCreated" and entry["upload_id"] == "u1" and entry["size"] == 5
    outside = make_record()
    logs.RequestIdFilter().filter(outside)
    assert "request_id" not in logs.TextFormatter().format(outside)
