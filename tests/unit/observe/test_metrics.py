"""Metrics, health and readiness, request IDs in responses, hooks and logs, and tracing, through TusApp.

Real requests against the in-process app (httpx's ASGI transport); the real server is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from pytusd import FileStore, MemoryLocker, TusApp
from pytusd.core.expiration import Cleaner
from pytusd.hooks import Hooks, HttpHookBackend, PythonHookBackend
from pytusd.observe import logs, tracing

from tests.conftest import PATCH_TYPE, TUS, create, make_app, patch
from tests.unit.core.test_expiration import age
from tests.unit.hooks.test_http import HookServer
from tests.unit.stores.test_s3 import s3  # noqa: F401  (the fixture: a bucket on the test S3 service)


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(app: TusApp, name: str, **labels: str) -> float:
    return app.metrics.value(name, **labels)


# -- metrics ---------------------------------------------------------------------------------------------------------


async def test_tusd_metrics_after_real_requests(client):
    app = client.app
    url = await create(client, 11)
    assert (await patch(client, url, 0, b"hello ")).status_code == 204
    assert (await patch(client, url, 0, b"again")).status_code == 409  # wrong offset
    assert (await patch(client, url, 6, b"world")).status_code == 204  # finished
    other = await create(client, 5)
    assert (await client.delete(other, headers=TUS)).status_code == 204
    assert (await client.head("/files/nope")).status_code == 404
    assert (await client.options("/files/")).status_code == 200
    assert (await client.get(url)).content == b"hello world"

    assert value(app, "tusd_requests_total", method="POST") == 2
    assert value(app, "tusd_requests_total", method="PATCH") == 3
    assert value(app, "tusd_requests_total", method="DELETE") == 1
    assert value(app, "tusd_requests_total", method="HEAD") == 1
    assert value(app, "tusd_requests_total", method="OPTIONS") == 1
    assert value(app, "tusd_requests_total", method="GET") == 1
    assert value(app, "tusd_bytes_received") == 11
    assert value(app, "tusd_uploads_created") == 2
    assert value(app, "tusd_uploads_finished") == 1
    assert value(app, "tusd_uploads_terminated") == 1
    assert value(app, "tusd_errors_total", status="409", code="ERR_MISMATCHED_OFFSET") == 1
    assert value(app, "tusd_errors_total", status="404", code="ERR_UPLOAD_NOT_FOUND") == 1
    assert value(app, "tusd_errors_total") == 2
    assert value(app, "tusd_connections_open") == 0  # in a library: requests in progress
    # pytusd's own
    assert value(app, "pytusd_upload_size_bytes_count") == 1 and value(app, "pytusd_upload_size_bytes_sum") == 11
    assert value(app, "pytusd_upload_duration_seconds_count") == 1
    assert value(app, "pytusd_upload_size_bytes_bucket", le="1000.0") == 1
    assert value(app, "pytusd_active_uploads") == 0
    assert value(app, "pytusd_lock_wait_seconds_count") >= 5
    for operation, at_least in (("create", 2), ("get", 5), ("write", 2), ("finish", 1), ("terminate", 1)):
        assert value(app, "pytusd_store_operation_seconds_count", operation=operation) >= at_least, operation
    assert value(app, "pytusd_store_operation_seconds_count", operation="concat") == 0


async def test_metrics_endpoint_speaks_tusds_exposition(client):
    url = await create(client, 3)
    await patch(client, url, 0, b"abc")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert r.headers["x-request-id"]
    assert "tus-resumable" not in r.headers
    text = r.text
    # tusd's plain counters keep their names and type, without _total and without _created series
    for name, expected in (("tusd_bytes_received", 3), ("tusd_uploads_created", 1), ("tusd_uploads_finished", 1),
                           ("tusd_uploads_terminated", 0)):
        assert f"# TYPE {name} counter\n" in text
        assert f"\n{name} {float(expected)}\n" in text
    assert "# TYPE tusd_requests_total counter" in text and "# TYPE tusd_connections_open gauge" in text
    samples = scrape(text)
    assert [name for name, _ in samples if name.endswith("_created")] == []  # (the parser adds _total to counters)
    assert samples[("tusd_requests_total", (("method", "GET"),))] == 0  # /metrics is not an upload request
    assert samples[("tusd_hook_invocations_total", (("hooktype", "pre-create"),))] == 0
    assert samples[("pytusd_store_operation_seconds_count", (("operation", "concat"),))] == 0
    assert (await client.get("/metrics")).status_code == 200
    assert value(client.app, "tusd_requests_total", method="GET") == 0


async def test_each_app_has_its_own_registry(client_factory):
    first, second = client_factory(), client_factory()
    await create(first, 1)
    assert first.app.metrics.registry is not second.app.metrics.registry
    assert value(first.app, "tusd_uploads_created") == 1 and value(second.app, "tusd_uploads_created") == 0


async def test_metrics_can_be_turned_off_or_moved(client_factory):
    off = client_factory(expose_metrics=False)
    assert (await off.get("/metrics")).status_code == 404
    moved = client_factory(metrics_path="internal/metrics")
    assert (await moved.get("/internal/metrics")).text.startswith("# HELP")
    assert (await moved.get("/metrics")).status_code == 404


async def test_hook_counters_are_the_registrys(client_factory):
    async def hook(hook_type, request):
        if hook_type == "pre-create" and request["Event"]["Upload"]["MetaData"].get("fail"):
            raise RuntimeError("no")
        if hook_type == "post-create":
            raise RuntimeError("notification fails")

    hooks = Hooks(PythonHookBackend(hook), ("pre-create", "post-create", "post-finish"))
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "fail eWVz"})
    assert r.status_code == 500
    url = await create(client, 1)
    await patch(client, url, 0, b"x")
    await hooks.drain()
    app = client.app
    assert value(app, "tusd_hook_invocations_total", hooktype="pre-create") == 2
    assert value(app, "tusd_hook_errors_total", hooktype="pre-create") == 1
    assert value(app, "tusd_hook_invocations_total", hooktype="post-create") == 1
    assert value(app, "tusd_hook_errors_total", hooktype="post-create") == 1
    assert value(app, "tusd_hook_invocations_total", hooktype="post-finish") == 1
    assert value(app, "tusd_errors_total", status="500", code="ERR_INTERNAL_SERVER_ERROR") == 1
    # one set of counters: the Hooks' own view reads the registry's
    assert hooks.invocations["pre-create"] == 2 and hooks.failures["pre-create"] == 1
    assert hooks.metrics()["tusd_hook_errors_total"]["post-create"] == 1


async def test_gauges_while_a_body_streams(client):
    app = client.app
    url = await create(client, 4)
    release = asyncio.Event()

    async def body():
        yield b"ab"
        await release.wait()
        yield b"cd"

    task = asyncio.create_task(
        client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=body())
    )
    for _ in range(200):
        if value(app, "pytusd_active_uploads") == 1:
            break
        await asyncio.sleep(0.01)
    assert value(app, "pytusd_active_uploads") == 1
    assert value(app, "tusd_connections_open") == 1
    release.set()
    assert (await task).status_code == 204
    assert value(app, "pytusd_active_uploads") == 0 and value(app, "tusd_connections_open") == 0
    assert value(app, "tusd_bytes_received") == 4


async def test_expired_uploads_removed_are_counted(client_factory, upload_dir):
    client = client_factory(expiration=60)
    app = client.app
    stale = [await create(client, 10) for _ in range(2)]
    for url in stale:
        age(upload_dir, url.rsplit("/", 1)[1], 120)
    assert (await client.head(stale[0])).status_code == 410  # found expired by a request
    assert value(app, "pytusd_expired_uploads_removed_total") == 1
    cleaner = Cleaner(app.config.store, app.config.locker, 60, 0, metrics=app.metrics)  # type: ignore[arg-type]
    assert await cleaner.run_once() == 1
    assert value(app, "pytusd_expired_uploads_removed_total") == 2


async def test_concatenation_is_timed(client):
    a = await create(client, 2, **{"Upload-Concat": "partial"})
    b = await create(client, 2, **{"Upload-Concat": "partial"})
    await patch(client, a, 0, b"ab")
    await patch(client, b, 0, b"cd")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert r.status_code == 201
    assert value(client.app, "pytusd_store_operation_seconds_count", operation="concat") == 1
    assert value(client.app, "tusd_uploads_finished") == 3


# -- health and readiness --------------------------------------------------------------------------------------------


class BrokenLocker(MemoryLocker):
    async def ready(self) -> None:
        raise ConnectionError("redis is down")


class ProbedStore(FileStore):
    """A store without ready(): /ready asks it for an upload that does not exist."""

    ready = None  # type: ignore[assignment]

    def __init__(self, path, fail: bool = False) -> None:
        super().__init__(path)
        self.fail = fail
        self.asked: list[str] = []

    async def get(self, upload_id):
        self.asked.append(upload_id)
        if self.fail:
            raise OSError("bucket unreachable")
        return await super().get(upload_id)


async def test_health_and_ready(client, upload_dir):
    r = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert "access-control-allow-origin" not in r.headers and "tus-resumable" not in r.headers
    r = await client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ok", "checks": {"store": "ok", "locker": "ok"}}
    assert (await client.head("/ready")).status_code == 200
    assert (await client.post("/health")).status_code == 405
    # not uploads: no requests counted
    assert value(client.app, "tusd_requests_total") == 0 and value(client.app, "tusd_errors_total") == 0
    shutil.rmtree(upload_dir)
    r = await client.get("/ready")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"store": "error: OSError", "locker": "ok"}}
    assert (await client.get("/health")).status_code == 200


async def test_ready_reports_a_failing_locker(client_factory, caplog):
    client = client_factory(locker=BrokenLocker())
    with caplog.at_level(logging.WARNING, "pytusd"):
        r = await client.get("/ready", headers={"X-Request-ID": "probe-1"})
    assert r.status_code == 503
    assert r.json()["checks"] == {"store": "ok", "locker": "error: ConnectionError"}
    [record] = [rec for rec in caplog.records if "readiness" in rec.getMessage()]
    assert "redis is down" in record.getMessage() and record.request_id == "probe-1"


async def test_ready_probes_a_store_without_ready(client_factory, tmp_path):
    fine = ProbedStore(tmp_path / "a")
    assert (await client_factory(store=fine).get("/ready")).status_code == 200
    assert fine.asked == ["pytusd-readiness-probe"]
    broken = ProbedStore(tmp_path / "b", fail=True)
    r = await client_factory(store=broken).get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["store"] == "error: OSError"


async def test_ready_times_out(client_factory, monkeypatch):
    import pytusd.asgi.app

    class Hanging(MemoryLocker):
        async def ready(self) -> None:
            await asyncio.sleep(60)

    monkeypatch.setattr(pytusd.asgi.app, "READY_TIMEOUT", 0.05)
    r = await client_factory(locker=Hanging()).get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["locker"] == "error: timeout"


async def test_ready_is_503_while_shutting_down(client):
    client.app.shutdown()
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["checks"] == {"server": "shutting down"}
    assert (await client.get("/health")).status_code == 200


async def test_observability_endpoints_skip_pre_access_and_version_checks(client_factory):
    seen = []

    async def hook(hook_type, request):
        seen.append(hook_type)
        return {"RejectUpload": True}

    client = client_factory(hooks=Hooks(PythonHookBackend(hook), ("pre-access",)), base_path="/")
    for path in ("/health", "/ready", "/metrics"):
        assert (await client.get(path, headers={"Tus-Resumable": "0.1"})).status_code == 200, path
    assert seen == []


async def test_endpoints_are_relative_to_the_mount_and_can_be_turned_off(tmp_path):
    app = make_app(tmp_path, health_path="/livez", ready_path="")
    outer = Starlette(routes=[Mount("/tus", app=app)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://tus.test") as client:
        assert (await client.get("/tus/livez")).json() == {"status": "ok"}
        assert (await client.get("/tus/metrics")).status_code == 200
        assert (await client.get("/tus/ready")).status_code == 404
        assert (await client.get("/tus/health")).status_code == 404


async def test_file_locker_and_store_ready(tmp_path):
    from pytusd import FileLocker

    store, locker = FileStore(tmp_path / "data"), FileLocker(tmp_path / "locks")
    with pytest.raises(OSError):
        await store.ready()
    with pytest.raises(OSError):
        await locker.ready()
    store.ensure_directory()
    os.makedirs(tmp_path / "locks")
    await store.ready()
    await locker.ready()


async def test_redis_locker_ready(redis_url):
    from pytusd import RedisLocker

    locker = RedisLocker(redis_url)
    try:
        await locker.ready()
    finally:
        await locker.close()
    unreachable = RedisLocker("redis://127.0.0.1:1/0", ttl=0.5)
    with pytest.raises(Exception):
        await unreachable.ready()
    await unreachable.close()


# -- request IDs -----------------------------------------------------------------------------------------------------


async def test_request_id_is_taken_or_made_and_sent_back(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    made = r.headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    r = await client.head("/files/nope", headers={"X-Request-ID": "bad id\" with=quotes"})
    assert r.status_code == 404 and len(r.headers["x-request-id"]) == 32  # unusable IDs are replaced


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


# -- tracing ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_one_span_per_request_with_store_and_hook_children(client_factory, spans):
    provider, exporter = spans
    server = HookServer()
    try:
        hooks = Hooks(HttpHookBackend(server.url, backoff=0.01), ("pre-create", "pre-finish"))
        client = client_factory(tracer_provider=provider, hooks=hooks)
        parent_trace = "0af7651916cd43dd8448eb211c80319c"
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "5",
                                                  "traceparent": f"00-{parent_trace}-b7ad6b7169203331-01"})
        url = r.headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        await patch(client, url, 0, b"hello")
        await client.head("/files/nope")
    finally:
        server.close()
    finished = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    [post] = by_name["POST /files/"]
    [patch_span] = by_name["PATCH /files/{id}"]
    [head] = by_name["HEAD /files/{id}"]
    assert format(post.context.trace_id, "032x") == parent_trace  # the incoming traceparent is continued
    assert post.attributes["http.method"] == "POST" and post.attributes["http.route"] == "/files/"
    assert post.attributes["http.status_code"] == 201 and post.attributes["tus.upload_id"] == upload_id
    assert patch_span.attributes["tus.upload_id"] == upload_id and patch_span.attributes["tus.offset"] == 5
    assert patch_span.attributes["http.status_code"] == 204
    assert head.attributes["http.status_code"] == 404

    def children(span):
        return sorted(s.name for s in finished if s.parent is not None and s.parent.span_id == span.context.span_id)

    assert children(post) == ["hook pre-create", "store.create"]
    assert children(patch_span) == ["hook pre-finish", "lock.acquire", "store.finish", "store.get", "store.write"]
    [write] = by_name["store.write"]
    assert write.attributes["tus.store.operation"] == "write" and write.attributes["tus.upload_id"] == upload_id
    # the HTTP hook got its span's context
    hook_span = by_name["hook pre-finish"][0]
    traceparents = [h.get("traceparent") for h, body in server.requests if body["Type"] == "pre-finish"]
    context = f"00-{format(hook_span.context.trace_id, '032x')}-{format(hook_span.context.span_id, '016x')}-"
    assert len(traceparents) == 1 and traceparents[0].startswith(context)


async def test_failed_requests_mark_the_span(client_factory, spans):
    provider, exporter = spans

    async def hook(hook_type, request):
        raise RuntimeError("down")

    client = client_factory(tracer_provider=provider, hooks=Hooks(PythonHookBackend(hook), ("pre-create",)))
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status_code == 500
    [span] = [s for s in exporter.get_finished_spans() if s.name == "POST /files/"]
    assert not span.status.is_ok and span.attributes["http.status_code"] == 500


async def test_no_spans_without_a_provider(client, monkeypatch):
    assert not client.app.tracing.active  # no tracer provider given and no global one set
    # and without opentelemetry at all, everything still works
    monkeypatch.setattr(tracing, "trace", None)
    assert tracing.Tracing().tracer() is None
    assert tracing.Tracing().span("x") is tracing.NOTHING
    url = await create(client, 1)
    assert (await patch(client, url, 0, b"x")).status_code == 204
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}


async def test_s3_store_ready(s3, client_factory):
    from pytusd import S3Store

    store = S3Store(s3.pytusd_bucket, s3)
    await store.ready()
    r = await client_factory(store=store).get("/ready")
    assert r.status_code == 200 and r.json()["checks"]["store"] == "ok"
    r = await client_factory(store=S3Store("pytusd-no-such-bucket", s3)).get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("error: ")
