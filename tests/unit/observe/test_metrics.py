"""Prometheus metrics (pytusd.observe.metrics) through TusApp: tusd's names and values after real requests, the
exposition at /metrics, one registry per app. Health and readiness are in tests/unit/asgi/test_health.py, request
IDs and logs in test_logs.py, tracing in test_tracing.py.

Real requests against the in-process app (httpx's ASGI transport); the real server is in tests/e2e.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from pytusd import TusApp
from pytusd.core.expiration import Cleaner
from pytusd.hooks import Hooks, PythonHookBackend

from tests.conftest import PATCH_TYPE, TUS, create, patch
from tests.unit.core.test_expiration import age


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


# -- metrics ----------------------------------------------------------------------------------------------------


async def test_metrics_snapshot_is_what_prometheus_shows(client_factory):
    client = client_factory()
    app: TusApp = client.app
    url = await create(client, 4)
    await patch(client, url, 0, b"abcd")
    await client.head("/files/missing")
    await patch(client, url, 1, b"x")  # 409
    other = await create(client, 9)
    await client.delete(other, headers=TUS)
    numbers = app.metrics.snapshot()
    assert numbers.requests == {"GET": 0, "HEAD": 1, "POST": 2, "PATCH": 2, "DELETE": 1, "OPTIONS": 0}
    assert numbers.requests_total == 6
    assert numbers.errors == {(404, "ERR_UPLOAD_NOT_FOUND"): 1, (409, "ERR_MISMATCHED_OFFSET"): 1}
    assert numbers.errors_by_status == {404: 1, 409: 1} and numbers.errors_total == 2
    assert (numbers.bytes_received, numbers.uploads_created, numbers.uploads_finished,
            numbers.uploads_terminated) == (4, 2, 1, 1)
    exposition = (await client.get("/metrics")).text
    assert 'tusd_requests_total{method="PATCH"} 2.0' in exposition
    assert "tusd_bytes_received 4.0" in exposition and "tusd_uploads_terminated 1.0" in exposition
    assert 'tusd_errors_total{code="ERR_MISMATCHED_OFFSET",status="409"} 1.0' in exposition
    for name in ("tusd_uploads_created", "tusd_uploads_finished"):
        assert app.metrics.value(name) == getattr(numbers, name.removeprefix("tusd_"))
