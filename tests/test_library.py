"""pytusd as a library: composition, event streams, callbacks, self-routed endpoints, in-process metrics, typing.

The counterparts of tusd's handler package (Config, StoreComposer, UnroutedHandler, the notification channels,
PreUploadCreateCallback / PreFinishResponseCallback, Metrics), driven in-process through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.routing import Route

import pytusd
from pytusd import (
    Config,
    CorsConfig,
    FileLocker,
    FileStore,
    HookResponse,
    Hooks,
    MemoryLocker,
    MethodOverrideMiddleware,
    TusApp,
    TusError,
    UploadEvent,
    UploadInfo,
)
from pytusd.errors import ERR_UPLOAD_NOT_FOUND
from pytusd.hooks import PythonHookBackend

from .conftest import PATCH_TYPE, TUS, create, patch

ROOT = Path(__file__).resolve().parent.parent


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")


async def next_event(subscription: pytusd.Subscription, timeout: float = 2.0) -> UploadEvent:
    return await asyncio.wait_for(subscription.get(), timeout)


# -- a store written by a user: the core protocol only -----------------------------------------------------------


class MemoryUpload:
    def __init__(self, info: UploadInfo) -> None:
        self._info = info
        self.data = bytearray()
        self.finished = False

    async def info(self) -> UploadInfo:
        return self._info.replace(offset=len(self.data))

    async def write(self, offset: int, chunks: AsyncIterable[bytes]) -> int:
        assert offset == len(self.data)
        written = 0
        async for chunk in chunks:
            self.data += chunk
            written += len(chunk)
        return written

    async def reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        yield bytes(self.data[start:end])

    async def finish(self) -> None:
        self.finished = True


class MemoryStore:
    """Nothing but create and get: no termination, concatenation, deferred length, checksums or expiration."""

    def __init__(self) -> None:
        self.uploads: dict[str, MemoryUpload] = {}

    async def create(self, info: UploadInfo) -> MemoryUpload:
        upload_id = info.id or secrets.token_hex(8)
        upload = MemoryUpload(info.replace(id=upload_id))
        self.uploads[upload_id] = upload
        return upload

    async def get(self, upload_id: str) -> MemoryUpload:
        try:
            return self.uploads[upload_id]
        except KeyError:
            raise ERR_UPLOAD_NOT_FOUND() from None


@pytest.mark.parametrize("locker", ["memory", "file"])
async def test_user_store_with_only_the_core_protocol(tmp_path, locker):
    store = MemoryStore()
    assert isinstance(store, pytusd.DataStore)
    assert pytusd.stores.capabilities(store) == pytusd.Capabilities()  # declares nothing: nothing optional
    (tmp_path / "locks").mkdir()  # FileLocker never creates folders itself (IDs come from URLs)
    chosen = MemoryLocker() if locker == "memory" else FileLocker(tmp_path / "locks")
    app = TusApp(Config(store=store, locker=chosen))
    async with client_for(app) as client:
        r = await client.options("/files/")
        assert r.headers["tus-extension"] == "creation,creation-with-upload"
        assert "tus-checksum-algorithm" not in r.headers
        url = await create(client, 11, **{"Upload-Metadata": "filename aGkudHh0"})
        assert (await patch(client, url, 0, b"hello ")).headers["upload-offset"] == "6"
        r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "3"}, content=b"abc")
        assert r.status_code == 201 and r.headers["upload-offset"] == "3"
        assert (await patch(client, url, 6, b"world")).status_code == 204
        head = await client.head(url, headers=TUS)
        assert head.headers["upload-offset"] == "11" and head.headers["upload-metadata"] == "filename aGkudHh0"
        assert (await client.get(url)).content == b"hello world"
        assert store.uploads[url.rsplit("/", 1)[1]].finished
        # What the store cannot do is refused, not attempted.
        r = await client.delete(url, headers=TUS)
        assert r.status_code == 405 and "DELETE" not in r.headers["allow"]
        r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
        assert r.status_code == 501 and "creation-defer-length" not in r.text
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": "partial"})
        assert r.status_code == 400 and "ERR_CONCATENATION_UNSUPPORTED" in r.text


async def test_store_capabilities_and_switches_shape_the_extensions(tmp_path):
    app = TusApp(Config(store=FileStore(tmp_path), locker=FileLocker(tmp_path), disable_termination=True,
                        disable_concatenation=True))
    async with client_for(app) as client:
        extensions = (await client.options("/files/")).headers["tus-extension"].split(",")
    assert "termination" not in extensions and "concatenation" not in extensions
    assert {"creation", "creation-with-upload", "creation-defer-length", "checksum"} <= set(extensions)


# -- event streams ----------------------------------------------------------------------------------------------


async def test_streams_carry_upload_and_request_without_hooks(client_factory):
    client = client_factory()
    app: TusApp = client.app
    assert app.config.hooks is None
    async with app.events.created() as created, app.events.completed() as completed, \
            app.events.progress() as progress, app.events.terminated() as terminated:
        url = await create(client, 5, **{"Upload-Metadata": "filename YS50eHQ=", "X-Request-ID": "req-1"})
        event = await next_event(created)
        upload_id = url.rsplit("/", 1)[1]
        assert event.kind == "created" and event.upload.id == upload_id and event.upload.offset == 0
        assert event.upload.metadata == {"filename": "a.txt"}
        assert event.request.method == "POST" and event.request.uri == "/files/"
        assert event.request.remote_addr.startswith("127.0.0.1")
        assert event.request.header("upload-length") == "5" and event.request.headers["Upload-Length"] == ("5",)
        assert event.request.request_id == "req-1"
        await patch(client, url, 0, b"hel")
        assert (await next_event(progress)).upload.offset == 3
        await patch(client, url, 3, b"lo")
        event = await next_event(progress)
        assert event.upload.offset == 5 and event.request.method == "PATCH"
        event = await next_event(completed)
        assert event.kind == "completed" and event.upload.offset == event.upload.size == 5
        assert event.upload.storage["Path"].endswith(upload_id)
        await client.delete(url, headers=TUS)
        event = await next_event(terminated)
        assert event.kind == "terminated" and event.upload.id == upload_id and event.request.method == "DELETE"
        assert len(created) == len(completed) == len(progress) == len(terminated) == 0
    assert app.events.subscriptions == ()


async def test_one_subscription_for_several_kinds_in_order(client_factory):
    client = client_factory()
    app: TusApp = client.app
    with pytest.raises(ValueError):
        app.events.subscribe("finished")  # type: ignore[arg-type]
    subscription = app.events.subscribe()  # all kinds
    url = await create(client, 2)
    await patch(client, url, 0, b"ab")
    await client.delete(url, headers=TUS)
    subscription.close()
    kinds = [event.kind async for event in subscription]  # what was queued, then the end
    assert kinds == ["created", "progress", "completed", "terminated"]


async def test_a_slow_consumer_never_blocks_uploads_and_drops_the_oldest(client_factory):
    client = client_factory()
    app: TusApp = client.app
    slow = app.events.completed(maxsize=2)
    fast = app.events.completed(maxsize=100)
    urls = []
    for _ in range(5):  # nobody reads `slow`: the uploads complete regardless
        r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "1"}, content=b"x")
        assert r.status_code == 201
        urls.append(r.headers["location"].rsplit("/", 1)[1])
    assert slow.dropped == 3 and len(slow) == 2
    assert [slow.get_nowait().upload.id for _ in range(2)] == urls[-2:]  # the newest are kept
    assert slow.get_nowait() is None
    assert fast.dropped == 0 and len(fast) == 5
    slow.close()
    fast.close()


async def test_progress_while_the_body_streams(client_factory):
    client = client_factory()
    app: TusApp = client.app
    app.events.progress_interval = 0.02

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"ab"
            await asyncio.sleep(0.015)

    async with app.events.progress() as progress:
        url = await create(client, 20)
        r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=slow_body())
        assert r.status_code == 204
        offsets = []
        while (event := progress.get_nowait()) is not None:
            offsets.append(event.upload.offset)
    assert len(offsets) >= 2 and offsets == sorted(offsets) and offsets[-1] == 20


async def test_concatenation_and_draft_creation_publish_too(client_factory):
    client = client_factory(enable_experimental_protocol=True)
    app: TusApp = client.app
    async with app.events.subscribe("created", "completed") as events:
        a = await create(client, 2, **{"Upload-Concat": "partial"})
        b = await create(client, 1, **{"Upload-Concat": "partial"})
        await patch(client, a, 0, b"ab")
        await patch(client, b, 0, b"c")
        r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
        final_id = r.headers["location"].rsplit("/", 1)[1]
        r = await client.post("/files/", headers={"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1"},
                              content=b"draft")
        assert r.status_code == 201
        draft_id = r.headers["location"].rsplit("/", 1)[1]
        seen = []
        while (event := events.get_nowait()) is not None:
            seen.append((event.kind, event.upload.id, event.upload.is_final))
    assert ("completed", final_id, True) in seen
    assert ("created", draft_id, False) in seen and ("completed", draft_id, False) in seen


async def test_a_stopped_upload_is_announced_as_terminated(client_factory):
    async def stop(hook_type: str, request: dict[str, Any]) -> dict[str, Any]:
        return {"StopUpload": True}

    client = client_factory(hooks=Hooks(PythonHookBackend(stop), ["post-receive"], progress_interval=0.01))
    app: TusApp = client.app

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"ab"
            await asyncio.sleep(0.01)

    async with app.events.terminated() as terminated:
        url = await create(client, 100)
        r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=slow_body())
        assert r.status_code == 400
        assert (await next_event(terminated)).upload.id == url.rsplit("/", 1)[1]


# -- callbacks --------------------------------------------------------------------------------------------------


async def test_pre_create_callback_rejects_with_a_response(client_factory, upload_dir):
    async def pre_create(event: UploadEvent) -> HookResponse | None:
        assert event.kind == "pre-create" and event.upload.id == ""
        if event.upload.size > 10:
            return HookResponse(reject_upload=True, status_code=413, body="too big\n", headers={"X-Limit": "10"})
        return None

    client = client_factory(pre_create=pre_create)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "11"})
    assert r.status_code == 413 and r.text == "too big\n" and r.headers["x-limit"] == "10"
    assert not upload_dir.exists() or os.listdir(upload_dir) == []
    assert client.app.metrics.snapshot().errors_by_code == {"ERR_UPLOAD_REJECTED": 1}
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "10"})).status_code == 201


async def test_pre_create_callback_raising_tus_error(client_factory):
    def pre_create(event: UploadEvent) -> None:  # plain functions work too
        if event.request.header("authorization") != "Bearer ok":
            raise TusError("ERR_UNAUTHORIZED", "who are you?", 401, headers={"WWW-Authenticate": "Bearer"})

    client = client_factory(pre_create=pre_create)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 401 and r.text == "ERR_UNAUTHORIZED: who are you?\n"
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Authorization": "Bearer ok"})
    assert r.status_code == 201


async def test_pre_create_callback_changes_the_upload_after_the_hook(client_factory, upload_dir):
    seen: list[str] = []

    async def hook(hook_type: str, request: dict[str, Any]) -> dict[str, Any]:
        return {"ChangeFileInfo": {"ID": "from-hook"}, "HTTPResponse": {"Header": {"X-Hook": "1"}}}

    async def pre_create(event: UploadEvent) -> dict[str, Any]:
        seen.append(event.upload.id)  # the callback runs after the hook and sees its change
        return {"ChangeFileInfo": {"ID": f"team/{event.upload.id}", "MetaData": {"owner": "team"}},
                "HTTPResponse": {"Header": {"X-Callback": "1"}}}

    client = client_factory(hooks=Hooks(PythonHookBackend(hook), ["pre-create"]), pre_create=pre_create)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "2"})
    assert r.status_code == 201 and r.headers["location"].endswith("/files/team/from-hook")
    assert r.headers["x-hook"] == "1" and r.headers["x-callback"] == "1"
    assert seen == ["from-hook"]
    assert (upload_dir / "team" / "from-hook.info").exists()
    head = await client.head(r.headers["location"])
    assert head.headers["upload-metadata"] == "owner dGVhbQ=="


async def test_pre_finish_callback_shapes_the_response(client_factory):
    finished: list[UploadInfo] = []

    async def pre_finish(event: UploadEvent) -> HookResponse:
        finished.append(event.upload)
        return HookResponse(headers={"X-Processed": "yes"})

    client = client_factory(pre_finish=pre_finish)
    url = await create(client, 3)
    r = await patch(client, url, 0, b"ab")
    assert "x-processed" not in r.headers and not finished
    r = await patch(client, url, 2, b"c")
    assert r.status_code == 204 and r.headers["x-processed"] == "yes"
    assert finished[0].offset == 3 and finished[0].id == url.rsplit("/", 1)[1]


async def test_pre_finish_callback_rejection_reaches_the_client_and_events_follow(client_factory):
    async def pre_finish(event: UploadEvent) -> None:
        raise TusError("ERR_VIRUS_FOUND", "infected", 422)

    client = client_factory(pre_finish=pre_finish)
    async with client.app.events.completed() as completed:
        r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "3"}, content=b"bad")
        assert r.status_code == 422 and r.text == "ERR_VIRUS_FOUND: infected\n"
        assert r.headers["content-type"].startswith("text/plain")
        assert (await next_event(completed)).upload.offset == 3  # the upload is complete regardless


# -- routing it yourself ----------------------------------------------------------------------------------------


def starlette_routes(tus: TusApp) -> list[Route]:
    e = tus.endpoints
    return [
        Route("/files/", e.create, methods=["POST"]),
        Route("/files/", e.options, methods=["OPTIONS"]),
        Route("/files/{upload_id:path}", e.head, methods=["HEAD"]),
        Route("/files/{upload_id:path}", e.patch, methods=["PATCH"]),
        Route("/files/{upload_id:path}", e.get, methods=["GET"]),
        Route("/files/{upload_id:path}", e.delete, methods=["DELETE"]),
        Route("/files/{upload_id:path}", e.options, methods=["OPTIONS"]),
    ]


async def test_endpoints_as_starlette_routes(tmp_path):
    async def pre_create(event: UploadEvent) -> HookResponse:
        return HookResponse(change_id=f"nested/{secrets.token_hex(4)}")

    tus = TusApp(Config(store=FileStore(tmp_path), pre_create=pre_create,
                        cors=CorsConfig(allow_origin=r"^https://app\.example$")))
    app = Starlette(routes=starlette_routes(tus), middleware=[Middleware(MethodOverrideMiddleware)])
    async with client_for(app) as client:
        origin = {"Origin": "https://app.example"}
        r = await client.options("/files/", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "Upload-Offset" in r.headers["access-control-allow-headers"] and "tus-extension" in r.headers
        r = await client.post("/files/", headers={**TUS, **origin, "Upload-Length": "5"})
        assert r.status_code == 201 and "Location" in r.headers["access-control-expose-headers"]
        url = r.headers["location"]
        assert url.startswith("http://tus.test/files/nested/")
        r = await client.post(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0",
                                            "X-HTTP-Method-Override": "PATCH"}, content=b"hello")
        assert r.status_code == 204 and r.headers["upload-offset"] == "5"
        assert (await client.head(url)).headers["upload-length"] == "5"
        assert (await client.get(url)).content == b"hello"
        r = await client.options(url, headers={**origin, "Access-Control-Request-Method": "PATCH"})
        assert r.status_code == 200
        r = await client.post("/files/", headers={**TUS, "Origin": "https://evil.example", "Upload-Length": "1"})
        assert r.status_code == 403
        assert (await client.get("/files/nested/nope")).status_code == 404
        assert (await client.delete(url, headers=TUS)).status_code == 204
        assert (await client.head(url)).status_code == 404
    numbers = tus.metrics.snapshot()
    assert numbers.requests["PATCH"] == 1 and numbers.requests["OPTIONS"] == 2 and numbers.uploads_terminated == 1


async def test_an_endpoint_serves_only_its_methods(tmp_path):
    tus = TusApp(Config(store=FileStore(tmp_path)))
    app = Starlette(routes=[Route("/up/{upload_id:path}", tus.endpoints.head, methods=["HEAD", "PATCH"])])
    async with client_for(app) as client:
        r = await client.patch("/up/abc", headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=b"x")
        assert r.status_code == 405 and r.headers["allow"] == "HEAD"
        assert r.text.startswith("ERR_METHOD_NOT_ALLOWED")
    assert repr(tus.endpoints.get) == "<pytusd Endpoint get (GET, HEAD)>"
    assert [e.operation.name for e in tus.endpoints] == ["create", "head", "patch", "get", "delete", "options"]


async def test_endpoints_in_fastapi_path_operations_with_a_dependency(tmp_path):
    tus = TusApp(Config(store=FileStore(tmp_path), base_path="/api/uploads/"))
    api = FastAPI()
    api.add_middleware(MethodOverrideMiddleware)
    background: list[str] = []

    async def user(request: Request) -> str:
        if request.headers.get("authorization") != "Bearer t":
            raise HTTPException(401)
        return "u"

    @api.post("/api/uploads/")
    async def create_upload(who: str = Depends(user)) -> Response:
        return tus.endpoints.create.response()

    @api.patch("/api/uploads/{upload_id}")
    async def patch_upload(upload_id: str, who: str = Depends(user)) -> Response:
        response = tus.endpoints.patch.response()
        response.background = BackgroundTask(background.append, upload_id)
        return response

    @api.head("/api/uploads/{upload_id}")
    async def head_upload(upload_id: str, who: str = Depends(user)) -> Response:
        return tus.endpoints.head.response()

    auth = {"Authorization": "Bearer t"}
    async with client_for(api) as client:
        assert (await client.post("/api/uploads/", headers={**TUS, "Upload-Length": "3"})).status_code == 401
        r = await client.post("/api/uploads/", headers={**TUS, **auth, "Upload-Length": "3"})
        assert r.status_code == 201 and r.headers["location"].startswith("http://tus.test/api/uploads/")
        url = r.headers["location"]
        assert (await patch(client, url, 0, b"abc")).status_code == 401
        r = await patch(client, url, 0, b"abc", **auth)
        assert r.status_code == 204 and r.headers["upload-offset"] == "3"
        assert background == [url.rsplit("/", 1)[1]]
        r = await client.head(url, headers=auth)
        assert r.status_code == 200 and r.headers["upload-offset"] == "3"


def test_method_override_middleware_leaves_other_requests_alone():
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["method"])

    middleware = MethodOverrideMiddleware(app)
    header = [(b"x-http-method-override", b"delete")]

    async def run() -> None:
        await middleware({"type": "http", "method": "POST", "headers": header}, None, None)  # type: ignore[arg-type]
        await middleware({"type": "http", "method": "GET", "headers": header}, None, None)  # type: ignore[arg-type]
        await middleware({"type": "http", "method": "POST", "headers": []}, None, None)  # type: ignore[arg-type]

    asyncio.run(run())
    assert seen == ["DELETE", "GET", "POST"]


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


# -- the public API: importable and typed -----------------------------------------------------------------------


def test_everything_is_importable_from_pytusd():
    for name in pytusd.__all__:
        assert getattr(pytusd, name) is not None, name
    for name in ("RedisLocker", "AzureStore", "GCSStore"):  # optional dependencies, imported on first use
        assert name not in pytusd.__all__ and isinstance(getattr(pytusd, name), type)
    assert (Path(pytusd.__file__).parent / "py.typed").exists()
    code = ("import sys, pytusd; from pytusd import *; "
            "print(sorted({'redis', 'boto3', 'azure', 'grpc'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_package_passes_mypy_strict():
    """The whole package, with the [tool.mypy] settings of pyproject.toml (the generated hook_pb2 modules left out)."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", "src/pytusd"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
