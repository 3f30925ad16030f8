"""Backends that cannot be reached: 503 with a tus error code and Retry-After, one log line, no traceback; the
start-up checks (pytusd.server.startup); the FileStore's readiness probe."""

from __future__ import annotations

import logging
import os
import time

import httpx
import pytest

from pytusd import FileStore, TusApp, errors
from pytusd.core.config import Config
from pytusd.server import startup
from testbed.services import free_port

TUS = {"Tus-Resumable": "1.0.0"}


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def assert_one_line_each(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert record.exc_info is None, record.getMessage()
        assert "\n" not in record.getMessage(), record.getMessage()


def client_for(app: TusApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_unreachable_is_recognised_through_the_cause_chain() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        assert errors.unreachable(exc)
    assert not errors.unreachable(ValueError("bad"))
    error = errors.ERR_STORAGE_UNAVAILABLE()
    assert error.status == 503 and error.headers["Retry-After"] == str(errors.UNAVAILABLE_RETRY_AFTER)


async def test_redis_down_then_up_answers_503_then_serves(tmp_path, caplog) -> None:
    from pytusd import RedisLocker
    from testbed.services import redis_server

    port = free_port()
    locker = RedisLocker(f"redis://127.0.0.1:{port}/0", ttl=1.0)
    app = TusApp(Config(store=FileStore(tmp_path / "data"), locker=locker))
    async with client_for(app) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
        assert r.status_code == 201
        url = r.headers["location"]
        caplog.clear()
        with caplog.at_level(logging.INFO, "pytusd"):
            r = await client.head(url, headers=TUS)
        assert r.status_code == 503 and r.headers["retry-after"] == str(errors.UNAVAILABLE_RETRY_AFTER)
        r2 = await client.patch(url, headers={**TUS, "Content-Type": "application/offset+octet-stream",
                                              "Upload-Offset": "0"}, content=b"hello")
        assert r2.status_code == 503 and r2.text.startswith("ERR_LOCKER_UNAVAILABLE"), r2.text
        records = failure_records(caplog)
        assert len([r for r in records if "cannot be reached" in r.getMessage()]) == 2, records  # one per request
        assert all(f"127.0.0.1:{port}" in r.getMessage() for r in records if "cannot be reached" in r.getMessage())
        assert_one_line_each(records)
        assert (await client.get("/ready")).status_code == 503

        with redis_server(tmp_path / "redis", port=port):
            assert (await client.get("/ready")).status_code == 200
            r = await client.patch(url, headers={**TUS, "Content-Type": "application/offset+octet-stream",
                                                 "Upload-Offset": "0"}, content=b"hello")
            assert r.status_code == 204, r.text
    await locker.close()


async def test_startup_check_redis_unreachable_is_one_error_line(tmp_path, caplog) -> None:
    from pytusd import RedisLocker

    port = free_port()
    config = Config(store=FileStore(tmp_path / "data"), locker=RedisLocker(f"redis://127.0.0.1:{port}/0", ttl=1.0))
    FileStore(tmp_path / "data").ensure_directory()
    with caplog.at_level(logging.INFO, "pytusd"):
        assert await startup.check(config) == ["locker"]
    records = failure_records(caplog)
    assert len(records) == 1 and records[0].levelno == logging.ERROR, records
    message = records[0].getMessage()
    assert f"127.0.0.1:{port}" in message and "not ready" in message, message
    assert_one_line_each(records)


async def test_startup_check_hook_server_down_is_a_warning(tmp_path, caplog) -> None:
    store = FileStore(tmp_path / "data")
    store.ensure_directory()
    port = free_port()
    hooks = [("--hooks-http", f"http://127.0.0.1:{port}/hooks", ["pre-create", "post-finish"])]
    with caplog.at_level(logging.INFO, "pytusd"):
        assert await startup.check(Config(store=store), hooks) == ["hooks"]
        assert await startup.check(Config(store=store), [("--hooks-grpc", f"127.0.0.1:{port}", ["post-finish"])]) == []
    records = failure_records(caplog)
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "pre-create" in records[0].getMessage() and f"127.0.0.1:{port}" in records[0].getMessage()


# -- S3 (Ceph RGW) ----------------------------------------------------------------------------------------------------


async def test_s3_endpoint_unreachable_answers_503(s3_keys, caplog) -> None:
    from pytusd import S3Store
    from pytusd.stores.s3 import make_client

    store = S3Store("pytusd-nowhere", make_client(endpoint=f"http://127.0.0.1:{free_port()}"))
    app = TusApp(Config(store=store))
    with caplog.at_level(logging.INFO, "pytusd"):
        assert await startup.check(app.config) == ["store"]
        async with client_for(app) as client:
            r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
            assert r.status_code == 503 and r.text.startswith("ERR_STORAGE_UNAVAILABLE"), r.text
            assert r.headers["retry-after"] == str(errors.UNAVAILABLE_RETRY_AFTER)
            r = await client.head("/files/2f023bc30b4046e9d5103f239c41b2b7+mp", headers=TUS)  # object+multipart ID
            assert r.status_code == 503
    records = failure_records(caplog)
    assert_one_line_each(records)
    assert len(records) == 3, [r.getMessage() for r in records]  # start-up, POST, HEAD
    assert "not ready" in records[0].getMessage()


async def test_s3_missing_bucket_is_fatal_at_startup(s3_keys) -> None:
    from pytusd import S3Store
    from pytusd.stores.s3 import make_client

    store = S3Store("pytusd-no-such-bucket", make_client(endpoint=s3_keys))
    with pytest.raises(startup.Fatal, match="'pytusd-no-such-bucket' .* does not exist"):
        await startup.check(Config(store=store))


# -- the FileStore's readiness probe ----------------------------------------------------------------------------------


@pytest.mark.parametrize("file_io", ["inline", "threads"])
async def test_file_store_ready_writes_a_probe_and_caches_success(tmp_path, monkeypatch, file_io) -> None:
    store = FileStore(tmp_path / "data", file_io=file_io)
    store.ensure_directory()
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    await store.ready()
    await store.ready()  # cached: no second probe file
    probes = [p for p in opened if ".pytusd-ready-" in p]
    assert len(probes) == 1 and probes[0].endswith(".tmp")
    assert os.listdir(tmp_path / "data") == []  # removed again
    assert [u async for u in store.upload_ids()] == []
    monkeypatch.setattr("pytusd.stores.file.READY_CACHE", 0.0)
    time.sleep(0.01)
    await store.ready()
    assert len([p for p in opened if ".pytusd-ready-" in p]) == 2


async def test_file_store_in_proc_is_not_ready() -> None:
    store = FileStore("/proc")
    with pytest.raises(OSError, match="cannot create a file in /proc"):
        await store.ready()


# -- GCS and Azure (SDK retries included: ~10-20 s each) --------------------------------------------------------------


async def test_gcs_endpoint_unreachable_answers_503(caplog, monkeypatch) -> None:
    from pytusd.stores.gcs import GCSStore

    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GCS_SERVICE_ACCOUNT_FILE"):
        monkeypatch.delenv(name, raising=False)
    store = GCSStore.from_options("pytusd-nowhere", endpoint=f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.INFO, "pytusd"):
        async with client_for(TusApp(Config(store=store))) as client:
            r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"}, timeout=60)
    assert r.status_code == 503 and r.text.startswith("ERR_STORAGE_UNAVAILABLE"), r.text
    records = failure_records(caplog)
    assert len(records) == 1 and "GCS storage cannot be reached" in records[0].getMessage(), records
    assert_one_line_each(records)


async def test_azure_endpoint_unreachable_answers_503(caplog, monkeypatch) -> None:
    from pytusd.stores.azure import AzureStore
    from testbed.services import AZURITE_ACCOUNT, AZURITE_KEY

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    store = AzureStore.from_options("pytusd-nowhere", endpoint=f"http://127.0.0.1:{free_port()}/{AZURITE_ACCOUNT}")
    with caplog.at_level(logging.INFO, "pytusd"):
        async with client_for(TusApp(Config(store=store))) as client:
            r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"}, timeout=60)
    assert r.status_code == 503 and r.text.startswith("ERR_STORAGE_UNAVAILABLE"), r.text
    records = [r for r in failure_records(caplog) if r.name == "pytusd"]
    assert len(records) == 1 and "Azure storage cannot be reached" in records[0].getMessage(), records
    assert_one_line_each(records)


async def test_startup_check_redis_refusing_the_password_is_fatal(tmp_path) -> None:
    from pytusd import RedisLocker
    from testbed.services import redis_server

    store = FileStore(tmp_path / "data")
    store.ensure_directory()
    with redis_server(tmp_path / "redis", password="s3cret") as url:
        for locker_url in (url, url.replace("redis://", "redis://:wrong@")):
            with pytest.raises(startup.Fatal, match="refused the credentials") as refused:
                await startup.check(Config(store=store, locker=RedisLocker(locker_url, ttl=1.0)))
            assert "wrong" not in str(refused.value)  # the password stays out of the log
        good = RedisLocker(url.replace("redis://", "redis://:s3cret@"), ttl=1.0)
        assert await startup.check(Config(store=store, locker=good)) == []


async def test_gcs_missing_bucket_is_fatal_and_not_ready(gcs_endpoint, client_factory) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from pytusd.stores.gcs import GCSStore

    client = storage.Client(project="pytusd-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_endpoint})
    missing = GCSStore("pytusd-no-such-bucket", client)
    with pytest.raises(startup.Fatal, match="'pytusd-no-such-bucket' does not exist"):
        await startup.check(Config(store=missing))
    r = await client_factory(store=missing).get("/ready")
    assert r.status_code == 503  # /ready no longer says ok for a bucket that is not there
    name = f"pytusd-ready-{os.getpid()}"
    client.create_bucket(name)
    try:
        present = GCSStore(name, client)
        assert await startup.check(Config(store=present)) == []
        assert (await client_factory(store=present).get("/ready")).status_code == 200
    finally:
        client.bucket(name).delete()
