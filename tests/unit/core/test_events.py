"""Upload events for the embedding application (pytusd.core.events): event streams (what they carry, one
subscription for several kinds, slow consumers, progress) and callbacks (pre-create, pre-finish)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pytusd import HookResponse, Hooks, TusApp, TusError, UploadEvent, UploadInfo
from pytusd.hooks import PythonHookBackend

from tests.conftest import PATCH_TYPE, TUS, create, patch
from tests.test_library import next_event


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
