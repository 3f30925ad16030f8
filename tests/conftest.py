from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from pytusd import Config, FileStore, MemoryLocker, TusApp
from testbed.services import ServiceMissing

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_TYPE = {"Content-Type": "application/offset+octet-stream"}


def make_app(tmp_path: os.PathLike[str], **overrides: Any) -> TusApp:
    store = overrides.pop("store", None) or FileStore(os.path.join(tmp_path, "data"))
    overrides.setdefault("locker", MemoryLocker())
    return TusApp(Config(store=store, **overrides))


@pytest.fixture
def upload_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
async def client_factory(tmp_path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def factory(**overrides: Any) -> httpx.AsyncClient:
        app = make_app(tmp_path, **overrides)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")
        client.app = app  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(client_factory) -> httpx.AsyncClient:
    return client_factory()


async def create(client: httpx.AsyncClient, length: int | None = 11, **headers: str) -> str:
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    h.update(headers)
    r = await client.post("/files/", headers=h)
    assert r.status_code == 201, r.text
    return r.headers["location"]


async def patch(client: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
    h = {**TUS, **PATCH_TYPE, "Upload-Offset": str(offset)}
    h.update(headers)
    return await client.patch(url, headers=h, content=data)


async def asgi(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
               ) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request into ``app`` with exactly this (already percent-decoded) path and
    these header bytes, which an HTTP client would normalise or refuse to send (control characters, lengths that
    are not numbers); ``Host: tus.test`` comes first."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"tus.test"), *[(k.lower(), v) for k, v in headers]],
             "client": ("127.0.0.1", 1234), "server": ("tus.test", 80)}
    await app(scope, receive, send)
    start = sent[0]
    return (start["status"], {k.decode(): v.decode("latin-1") for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))


async def raw_request(
    app: Any, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Call an ASGI app with exactly this (already percent-decoded) path: no client normalises it first."""
    pairs = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return await asgi(app, method, path, pairs + [(b"content-length", str(len(body)).encode())], body)


async def start_grpc_hook_server(handler: Any) -> tuple[Any, int]:
    """A real gRPC hook server (tusd's HookHandler service) with ``handler`` on a free port of 127.0.0.1: (server,
    port). Stop it with ``await server.stop(None)``."""
    from grpc import aio

    from pytusd.hooks.proto import hook_pb2_grpc

    server = aio.server()
    hook_pb2_grpc.add_HookHandlerServicer_to_server(handler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


# --- real services, started once per test session (testbed/services.py) -----------------------------------------


def _service_missing(exc: ServiceMissing) -> None:
    """A service's program is not installed: skipped on a developer's machine, failed under CI=true (a missing
    service must never look like a pass)."""
    if os.environ.get("CI") == "true":
        pytest.fail(str(exc))
    pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    try:
        return (yield)  # fixtures: redis_url, s3_endpoint, ...
    except ServiceMissing as exc:
        _service_missing(exc)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    try:
        return (yield)  # tests that start a service themselves
    except ServiceMissing as exc:
        _service_missing(exc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    from testbed.services import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A Ceph RADOS Gateway; PYTUSD_TEST_S3_ENDPOINT points the suite at one already running (keys from services)."""
    from testbed.services import ceph_rgw

    if os.environ.get("PYTUSD_TEST_S3_ENDPOINT"):
        yield os.environ["PYTUSD_TEST_S3_ENDPOINT"]
        return
    with ceph_rgw(tmp_path_factory.mktemp("ceph")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_keys(s3_endpoint, monkeypatch):
    """The gateway's endpoint, with its keys and region in the environment (where boto3 and pytusd read them)."""
    from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture(scope="session")
def azure_endpoint(tmp_path_factory):
    from testbed.services import azurite

    with azurite(tmp_path_factory.mktemp("azurite")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def azure_next_endpoint(tmp_path_factory):
    """Azurite 3.37, which has Put Block From URL (the suite's Azurite answers it 501)."""
    from testbed.services import azurite

    with azurite(tmp_path_factory.mktemp("azurite-next"), next_release=True) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory):
    from testbed.services import gcs_emulator

    with gcs_emulator(tmp_path_factory.mktemp("gcs")) as endpoint:
        yield endpoint


@contextlib.contextmanager
def serve_in_thread(app: Any, thread_name: str = "tus-event-loop", **options: Any) -> Iterator[int]:
    """Serve ``app`` with pytusd's own server (pytusd.server.Server) in a thread on a free port of 127.0.0.1;
    yields the port. ``options`` are ServeOptions fields."""
    from pytusd.server import ServeOptions, Server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Server(app, ServeOptions(host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name=thread_name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"
