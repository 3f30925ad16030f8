"""--request-completion-timeout (tusd's GracefulRequestCompletionTimeout): once a request has ended early (the
client went away, the server shuts down), the store may go on storing what arrived for that long, and no longer.

The store is the file store with a slow save after its write (as an object store uploading its last part would be),
injected by wrapping FileUpload.write; the requests go straight into the ASGI app."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from pytusd import Config, FileStore, MemoryLocker, TusApp
from pytusd.stores.file import FileUpload

from tests.conftest import TUS

CHUNK = b"x" * 1000


@pytest.fixture
def slow_save(monkeypatch):
    """Every write stores its bytes, then takes ``state["seconds"]`` more; ``state["cancelled"]`` counts the saves
    that were cancelled, ``state["finished"]`` the ones that were not."""
    state: dict[str, Any] = {"seconds": 30.0, "cancelled": 0, "finished": 0}
    write = FileUpload.write

    async def slow_write(self, offset, chunks):
        written = await write(self, offset, chunks)
        try:
            await asyncio.sleep(state["seconds"])
        except asyncio.CancelledError:
            state["cancelled"] += 1
            raise
        state["finished"] += 1
        return written

    monkeypatch.setattr(FileUpload, "write", slow_write)
    return state


def make_app(tmp_path, **config: Any) -> TusApp:
    return TusApp(Config(store=FileStore(str(tmp_path / "data")), locker=MemoryLocker(), **config))


async def request(app: TusApp, method: str, path: str, headers: dict[str, str], messages: list[Any],
                  headers_out: dict[str, str] | None = None):
    """One request; ``messages`` are its receive() answers in turn: an ASGI message, or an asyncio.Event to wait for
    before the next one. Returns (status, body); the response's headers go to ``headers_out`` when given."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        while messages and isinstance(messages[0], asyncio.Event):
            await messages.pop(0).wait()
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # a client that sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"tus.test"), *[(k.lower().encode(), v.encode()) for k, v in headers.items()]],
             "client": ("127.0.0.1", 1234), "server": ("tus.test", 80)}
    await app(scope, receive, send)
    if headers_out is not None:
        headers_out.update({k.decode(): v.decode() for k, v in sent[0]["headers"]})
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def new_upload(app: TusApp, length: int) -> str:
    headers: dict[str, str] = {}
    status, _ = await request(app, "POST", "/files/", {**TUS, "Upload-Length": str(length)},
                              [{"type": "http.request", "body": b""}], headers)
    assert status == 201
    return headers["location"].rsplit("/", 1)[1]


def patch_headers(length: int) -> dict[str, str]:
    return {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length)}


async def test_a_client_gone_leaves_the_store_the_timeout_and_no_longer(tmp_path, slow_save, caplog):
    app = make_app(tmp_path, request_completion_timeout=0.2)
    upload_id = await new_upload(app, 10 * len(CHUNK))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pytusd"):
        status, body = await asyncio.wait_for(request(
            app, "PATCH", f"/files/{upload_id}", patch_headers(10 * len(CHUNK)),
            [{"type": "http.request", "body": CHUNK, "more_body": True}, {"type": "http.disconnect"}]), 5)
    took = time.monotonic() - started
    assert 0.2 <= took < 2, took
    assert slow_save["cancelled"] == 1 and slow_save["finished"] == 0
    assert status == 400 and body.startswith(b"ERR_UNEXPECTED_EOF: the request ended and the storage did not finish")
    assert any(getattr(r, "fields", {}).get("event") == "RequestCompletionTimeout" for r in caplog.records)
    # What was stored before the save was stopped is the upload's offset.
    slow_save["seconds"] = 0
    status, _ = await request(app, "HEAD", f"/files/{upload_id}", TUS, [])
    assert status == 200
    assert (tmp_path / "data" / upload_id).stat().st_size == len(CHUNK)


async def test_on_shutdown_the_store_has_the_timeout_to_save_and_the_answer_is_503(tmp_path, slow_save):
    app = make_app(tmp_path, request_completion_timeout=0.3)
    upload_id = await new_upload(app, 10 * len(CHUNK))

    async def shut_down_soon() -> None:
        await asyncio.sleep(0.1)  # the first chunk arrived, the client sends no more for now
        app.shutdown()

    stopper = asyncio.create_task(shut_down_soon())
    started = time.monotonic()
    status, body = await asyncio.wait_for(request(app, "PATCH", f"/files/{upload_id}", patch_headers(10 * len(CHUNK)),
                                                  [{"type": "http.request", "body": CHUNK, "more_body": True}]), 5)
    await stopper
    took = time.monotonic() - started
    assert 0.4 <= took < 2, took
    assert status == 503 and body.startswith(b"ERR_SERVER_SHUTDOWN: the request ended and the storage did not")
    assert slow_save["cancelled"] == 1


async def test_a_request_that_did_not_end_early_is_not_bounded(tmp_path, slow_save):
    """The timeout starts when the request ends early: a body that arrived in full is stored however long it takes."""
    slow_save["seconds"] = 0.5
    app = make_app(tmp_path, request_completion_timeout=0.1)
    upload_id = await new_upload(app, len(CHUNK))
    status, _ = await request(app, "PATCH", f"/files/{upload_id}", patch_headers(len(CHUNK)),
                              [{"type": "http.request", "body": CHUNK, "more_body": False}])
    assert status == 204 and slow_save == {"seconds": 0.5, "cancelled": 0, "finished": 1}


async def test_a_client_gone_with_a_store_quick_enough_is_answered_as_before(tmp_path, slow_save):
    slow_save["seconds"] = 0.05
    app = make_app(tmp_path, request_completion_timeout=5)
    upload_id = await new_upload(app, 10 * len(CHUNK))
    status, body = await request(app, "PATCH", f"/files/{upload_id}", patch_headers(10 * len(CHUNK)), [
        {"type": "http.request", "body": CHUNK, "more_body": True}, {"type": "http.disconnect"}])
    assert status == 400 and body == b"ERR_UNEXPECTED_EOF: the client closed the connection\n"
    assert slow_save["finished"] == 1 and slow_save["cancelled"] == 0


def test_the_flag_and_its_default(tmp_path):
    from pytusd.server.cli.compose import config_from_args
    from pytusd.server.cli.flags import build_parser, normalise_argv

    def timeout(*argv: str) -> float:
        parser = build_parser()
        args = parser.parse_args(normalise_argv(["--upload-dir", str(tmp_path), *argv], parser))
        return config_from_args(args).request_completion_timeout

    assert timeout() == 10.0  # tusd's default
    assert timeout("-request-completion-timeout", "2500ms") == 2.5
    assert timeout("-request-completion-timeout=1m") == 60.0
    assert timeout("-request-completion-timeout=0") == 10.0  # 0: the default, as in tusd
    assert Config(store=FileStore(str(tmp_path))).request_completion_timeout == 10.0
    with pytest.raises(ValueError):
        Config(store=FileStore(str(tmp_path)), request_completion_timeout=0)
