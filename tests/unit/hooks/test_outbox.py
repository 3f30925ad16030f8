"""The durable hooks' outbox (pytusd.hooks.outbox), on a folder and on a real redis-server: events recorded before
the request answers, delivered at least once in order per upload with a stable EventID, leases that exclude a
second deliverer, dead letters, retry and drop; and through the app with Python hooks."""

from __future__ import annotations

import contextlib
import os
import time

import pytest

from pytusd.hooks import Hooks, PythonHookBackend
from pytusd.hooks.outbox import FolderOutbox, Outbox, RedisOutbox
from pytusd.info import UploadInfo
from pytusd.observe.metrics import Metrics
from tests.conftest import create, patch


class Flaky:
    """A Python hook that fails its first ``failures`` calls, then records what it got."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str, str]] = []  # (hook, upload, EventID), failed calls included
        self.delivered: list[tuple[str, str, str]] = []

    async def __call__(self, hook_type, request):
        entry = (hook_type, request["Event"]["Upload"]["ID"], request.get("EventID", ""))
        self.calls.append(entry)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("the hook server is down")
        self.delivered.append(entry)
        return None


@pytest.fixture(params=["folder", "redis"])
def store_factory(request, tmp_path):
    stack = contextlib.ExitStack()
    if request.param == "folder":
        def make():
            return FolderOutbox(tmp_path / "outbox")
    else:
        from testbed.services import redis_server

        url = stack.enter_context(redis_server(tmp_path / "redis"))

        def make():
            return RedisOutbox(url, prefix=f"test:{os.getpid()}:")
    with stack:
        yield make


def outbox_with(store, hook, **options):
    hooks = Hooks(PythonHookBackend(hook), ("post-create", "post-finish", "post-terminate"))
    outbox = Outbox(store, backoff=0.01, max_backoff=0.02, **options)
    hooks.use_outbox(outbox)
    hooks.instrument(Metrics())
    return hooks, outbox


def info(upload_id: str, offset: int = 0) -> UploadInfo:
    return UploadInfo(id=upload_id, size=10, offset=offset)


HTTP = {"Method": "PATCH", "URI": "/files/x", "RemoteAddr": "127.0.0.1", "Header": {}}


async def deliver_all(outbox: Outbox, rounds: int = 200) -> None:
    for _ in range(rounds):
        await outbox.deliver_once()
        if not await outbox.store.events(False, 100):
            return
        time.sleep(0.005)
    raise AssertionError("events still pending")


async def test_at_least_once_in_order_with_stable_ids(store_factory):
    hook = Flaky(failures=3)
    hooks, outbox = outbox_with(store_factory(), hook)
    for upload_id in ("a", "b"):
        await hooks.notify("post-create", info(upload_id), HTTP)
        await hooks.notify("post-finish", info(upload_id, 10), HTTP)
    assert len(await outbox.store.events(False, 100)) == 4  # recorded before anything was delivered
    assert hook.calls == []
    await deliver_all(outbox)
    for upload_id in ("a", "b"):
        delivered = [h for h, u, _ in hook.delivered if u == upload_id]
        assert delivered == ["post-create", "post-finish"]  # in order per upload, each once acknowledged
        # A repeat carries the ID of the first try; different events have different IDs.
        ids = {(h, e) for h, u, e in hook.calls if u == upload_id}
        assert len(ids) == 2 and all(len(e) == 32 for _, e in ids)
    assert len(hook.calls) == 4 + 3
    counters = hooks.counters
    assert counters.value("pytusd_hook_delivery_attempts_total", hooktype="post-create", result="failed") == 3
    assert counters.value("pytusd_hook_delivery_attempts_total", hooktype="post-finish", result="ok") == 2
    await outbox.store.aclose()


async def test_a_later_event_waits_for_the_earlier_one(store_factory):
    hook = Flaky(failures=1000)
    hooks, outbox = outbox_with(store_factory(), hook)
    await hooks.notify("post-create", info("a"), HTTP)
    await hooks.notify("post-finish", info("a", 10), HTTP)
    for _ in range(5):
        await outbox.deliver_once()
        time.sleep(0.03)
    assert {h for h, _, _ in hook.calls} == {"post-create"}  # post-finish never tried before post-create is through
    await outbox.store.aclose()


async def test_a_held_lease_keeps_a_second_deliverer_out(store_factory):
    first, second = store_factory(), store_factory()
    hooks, outbox = outbox_with(first, Flaky())
    await hooks.notify("post-finish", info("a", 10), HTTP)
    [event] = await first.events(False, 10)
    claimed = await first.claim(event, 5.0)
    assert claimed is not None
    assert await second.claim(event, 5.0) is None  # another process: out while the lease is held
    lease, fresh = claimed
    assert fresh.id == event.id
    await lease.release()
    again = await second.claim(event, 5.0)
    assert again is not None
    await again[0].release()
    await first.aclose()
    await second.aclose()


async def test_dead_letters_retry_and_drop(store_factory):
    hook = Flaky(failures=2)
    hooks, outbox = outbox_with(store_factory(), hook, max_attempts=2)
    await hooks.notify("post-finish", info("a", 10), HTTP)
    for _ in range(20):
        await outbox.deliver_once()
        time.sleep(0.03)
    [dead] = await outbox.store.events(True, 10)
    assert await outbox.store.events(False, 10) == [] and hook.delivered == [] and len(hook.calls) == 2
    assert hooks.counters.value("pytusd_hook_dead_letters_total", hooktype="post-finish") == 1
    assert dead.attempts == 2 and "down" in dead.last_error
    assert await outbox.retry(dead.id) == 1
    await deliver_all(outbox)
    assert hook.delivered == [("post-finish", "a", dead.id)]  # the same ID on the delivery after the retry
    await hooks.notify("post-create", info("c"), HTTP)
    [pending] = await outbox.store.events(False, 10)
    assert await outbox.drop(pending.id) is True
    assert await outbox.store.events(False, 10) == [] and await outbox.drop(pending.id) is False
    with pytest.raises(ValueError):
        await outbox.find("../etc/passwd")
    await outbox.store.aclose()


async def test_the_app_records_before_answering(client_factory, tmp_path):
    hook = Flaky(failures=10**6)  # down: what the requests recorded stays in the outbox
    hooks = Hooks(PythonHookBackend(hook), ("post-create", "post-finish"))
    outbox = Outbox(FolderOutbox(tmp_path / "outbox"), backoff=0.01, max_backoff=0.02)
    hooks.use_outbox(outbox)
    client = client_factory(hooks=hooks)
    url = await create(client, 5)
    await patch(client, url, 0, b"hello")
    # Answered: both events are in the folder, whatever the app's deliverer (running meanwhile) tried.
    assert [e.hook_type for e in await outbox.store.events(False, 10)] == ["post-create", "post-finish"]
    hook.failures = 0
    await outbox.retry()
    await deliver_all(outbox)
    assert [h for h, _, _ in hook.delivered] == ["post-create", "post-finish"]
    assert len({event_id for _, _, event_id in hook.delivered}) == 2


async def test_file_hooks_get_the_event_id(tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    script = hooks_dir / "post-finish"
    script.write_text('#!/bin/sh\nfirst=$(cat)\nprintf "%s %s" "$TUS_EVENT_ID" "$first" >> seen.txt\n'
                      '[ -e ok ] || exit 1\n')
    script.chmod(0o755)
    from pytusd.hooks import FileHookBackend

    hooks = Hooks(FileHookBackend(hooks_dir), ("post-finish",))
    outbox = Outbox(FolderOutbox(tmp_path / "outbox"), backoff=0.01, max_backoff=0.02)
    hooks.use_outbox(outbox)
    await hooks.notify("post-finish", info("a", 10), HTTP)
    await outbox.deliver_once()  # the script fails: no "ok" file yet
    (hooks_dir / "ok").touch()
    await deliver_all(outbox)
    [event_id, *_] = (hooks_dir / "seen.txt").read_text().split(" ", 1)
    seen = (hooks_dir / "seen.txt").read_text()
    assert len(event_id) == 32 and seen.count(f'"EventID": "{event_id}"') == 2 and seen.count(event_id + " ") == 2


async def test_grpc_hooks_get_the_event_id_as_metadata(tmp_path):
    """tusd's gRPC messages have no field for it: the EventID travels as ``idempotency-key`` call metadata, the
    same on the repeat after a refused call."""
    import grpc

    from pytusd.hooks.grpc import GrpcHookBackend
    from pytusd.hooks.proto import hook_pb2, hook_pb2_grpc
    from tests.conftest import start_grpc_hook_server

    seen: list[tuple[str, str]] = []

    class Handler(hook_pb2_grpc.HookHandlerServicer):
        async def InvokeHook(self, request, context):
            metadata = dict(context.invocation_metadata())
            seen.append((request.type, metadata.get("idempotency-key", "")))
            if len(seen) == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "down for a moment")
            return hook_pb2.HookResponse()

    server, port = await start_grpc_hook_server(Handler())
    backend = GrpcHookBackend(f"127.0.0.1:{port}", retry=0, backoff=0.01, timeout=5)
    try:
        hooks = Hooks(backend, ("post-finish",))
        outbox = Outbox(FolderOutbox(tmp_path / "outbox"), backoff=0.01, max_backoff=0.02)
        hooks.use_outbox(outbox)
        await hooks.notify("post-finish", info("a", 10), HTTP)
        [event] = await outbox.store.events(False, 10)
        await deliver_all(outbox)
        assert seen == [("post-finish", event.id), ("post-finish", event.id)]
    finally:
        await backend.aclose()
        await server.stop(None)


async def test_fireboom_post_upload_gets_the_event_id_as_idempotency_key(tmp_path):
    """Fireboom's postUpload (a post-finish) is durable too: its Idempotency-Key is the EventID, the same on the
    repeat after the hook server answered 500."""
    from pytusd.hooks import FireboomHookBackend
    from tests.unit.hooks.test_http import HookServer

    server = HookServer(answers=[(500, "down"), (200, {})])
    try:
        backend = FireboomHookBackend(server.url.rsplit("/", 1)[0], "files", "avatars")
        hooks = Hooks(backend, ("post-finish",))
        outbox = Outbox(FolderOutbox(tmp_path / "outbox"), backoff=0.01, max_backoff=0.02)
        hooks.use_outbox(outbox)
        await hooks.notify("post-finish", info("a", 10), HTTP)
        [event] = await outbox.store.events(False, 10)
        await deliver_all(outbox)
        keys = [(h["path"], h.get("Idempotency-Key")) for h, _ in server.requests]
        assert keys == [("/upload/files/avatars/postUpload", event.id)] * 2
    finally:
        server.close()
