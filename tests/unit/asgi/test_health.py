"""Health and readiness of TusApp: /health, /ready probing the store and the locker (on the file store, Redis and
S3), timeouts, shutting down, and the endpoints' paths."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from pytusd import FileStore, MemoryLocker
from pytusd.hooks import Hooks, PythonHookBackend

from tests.conftest import make_app
from tests.unit.observe.test_metrics import value
from tests.unit.stores.test_s3 import s3  # noqa: F401  (the fixture: a bucket on the test S3 service)


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
    import pytusd.asgi.health

    class Hanging(MemoryLocker):
        async def ready(self) -> None:
            await asyncio.sleep(60)

    monkeypatch.setattr(pytusd.asgi.health, "READY_TIMEOUT", 0.05)
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


async def test_s3_store_ready(s3, client_factory):
    from pytusd import S3Store

    store = S3Store(s3.pytusd_bucket, s3)
    await store.ready()
    r = await client_factory(store=store).get("/ready")
    assert r.status_code == 200 and r.json()["checks"]["store"] == "ok"
    r = await client_factory(store=S3Store("pytusd-no-such-bucket", s3)).get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("error: ")
