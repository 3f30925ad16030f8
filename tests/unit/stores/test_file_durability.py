"""Durability of the file store through TusApp: --fsync ordering, a full disk, a read-only disk.

The storage failures are injected (os.pwrite / os.open raising), so these run anywhere, CI included; the same
situations on a real small filesystem are in tests/e2e/test_hostile.py.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import logging
import os
import threading
import time
from typing import Any

import pytest

from pytusd import Config, FileStore, MemoryLocker, TusApp, UploadInfo
from pytusd.lockers import FileLocker

TUS = {"tus-resumable": "1.0.0"}
PATCH_TYPE = {"content-type": "application/offset+octet-stream"}


async def call(
    app: TusApp, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
    events: list[tuple[str, Any]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app; with ``events``, the response's start is recorded there."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if events is not None and message["type"] == "http.response.start":
            events.append(("response", message["status"]))
        sent.append(message)

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw_headers += [(b"host", b"tus.test"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": raw_headers,
        "client": ("127.0.0.1", 1234), "server": ("tus.test", 80),
    }
    await app(scope, receive, send)
    start = sent[0]
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


def make_app(tmp_path, fsync: bool = False, locker=None) -> TusApp:
    return TusApp(Config(store=FileStore(tmp_path / "data", fsync=fsync), locker=locker or MemoryLocker()))


async def create(app: TusApp, length: int, body: bytes = b"", **headers: str) -> tuple[int, dict[str, str], bytes]:
    h = {**TUS, "upload-length": str(length), **headers}
    if body:
        h.update(PATCH_TYPE)
    return await call(app, "POST", "/files/", h, body)


def path_of(location: str) -> str:
    return "/files/" + location.rsplit("/", 1)[1]


async def offset_of(app: TusApp, path: str) -> int:
    status, headers, _ = await call(app, "HEAD", path, TUS)
    assert status == 200
    return int(headers["upload-offset"])


# -- --fsync ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def disk_events(monkeypatch):
    """Every pwrite, fsync and fdatasync, in order, with the path of the file (or folder) it was on."""
    events: list[tuple[str, Any]] = []

    def name(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    for call_name in ("fsync", "fdatasync", "pwrite"):
        real = getattr(os, call_name)

        def recorder(fd, *args, _real=real, _name=call_name):
            events.append((_name, name(fd)))
            return _real(fd, *args)

        monkeypatch.setattr(os, call_name, recorder)
    return events


def before_response(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    responses = [i for i, e in enumerate(events) if e[0] == "response"]
    assert len(responses) == 1, events
    return events[: responses[0]]


async def test_fsync_patch_data_is_flushed_after_the_last_write_and_before_the_answer(tmp_path, disk_events):
    app = make_app(tmp_path, fsync=True)
    status, headers, _ = await create(app, 10)
    assert status == 201
    path = path_of(headers["location"])
    data_file = str(tmp_path / "data" / path.rsplit("/", 1)[1])
    disk_events.clear()
    status, headers, _ = await call(
        app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "0"}, b"12345", events=disk_events
    )
    assert status == 204 and headers["upload-offset"] == "5"
    done = before_response(disk_events)
    writes = [i for i, e in enumerate(done) if e == ("pwrite", data_file)]
    syncs = [i for i, e in enumerate(done) if e == ("fdatasync", data_file)]
    assert writes and syncs and syncs[-1] > writes[-1], disk_events


async def test_fsync_creation_flushes_info_and_folder_before_201(tmp_path, disk_events):
    app = make_app(tmp_path, fsync=True)
    folder = str(tmp_path / "data")
    # creation without data: the .info (written to a temporary name, then renamed) and the folder's entries
    disk_events.clear()
    status, _, _ = await call(app, "POST", "/files/", {**TUS, "upload-length": "10"}, events=disk_events)
    assert status == 201
    done = before_response(disk_events)
    info_sync = [i for i, (kind, p) in enumerate(done) if kind == "fsync" and ".info." in p and p.endswith(".tmp")]
    folder_sync = [i for i, e in enumerate(done) if e == ("fsync", folder)]
    assert info_sync and folder_sync and folder_sync[-1] > info_sync[-1], disk_events


async def test_fsync_creation_with_upload_flushes_info_and_data_before_201(tmp_path, disk_events):
    app = make_app(tmp_path, fsync=True)
    folder = str(tmp_path / "data")
    status, headers, _ = await call(
        app, "POST", "/files/", {**TUS, **PATCH_TYPE, "upload-length": "10"}, b"0123456789", events=disk_events
    )
    assert status == 201 and headers["upload-offset"] == "10"
    data_file = os.path.join(folder, headers["location"].rsplit("/", 1)[1])
    done = before_response(disk_events)
    kinds = [(kind, p) for kind, p in done]
    assert ("fsync", folder) in kinds
    last_write = max(i for i, e in enumerate(kinds) if e == ("pwrite", data_file))
    assert any(e == ("fdatasync", data_file) for e in kinds[last_write:]), disk_events


async def test_fsync_checksummed_patch_makes_its_marker_removal_durable(tmp_path, disk_events):
    """A verified chunk leaves a .pending marker while it is written; after a power loss a marker that came back
    would hide the acknowledged chunk, so its removal is flushed (the folder) before the answer."""
    app = make_app(tmp_path, fsync=True)
    folder = str(tmp_path / "data")
    _, headers, _ = await create(app, 5)
    path = path_of(headers["location"])
    data_file = os.path.join(folder, path.rsplit("/", 1)[1])
    digest = base64.b64encode(hashlib.sha1(b"hello").digest()).decode()
    disk_events.clear()
    status, headers, _ = await call(
        app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "0", "upload-checksum": f"sha1 {digest}"},
        b"hello", events=disk_events,
    )
    assert status == 204 and headers["upload-offset"] == "5"
    done = before_response(disk_events)
    data_sync = max(i for i, e in enumerate(done) if e == ("fdatasync", data_file))
    assert any(e == ("fsync", folder) for e in done[data_sync:]), disk_events
    assert not os.path.exists(data_file + ".pending")


async def test_fsync_declared_length_is_flushed_before_the_answer(tmp_path, disk_events):
    app = make_app(tmp_path, fsync=True)
    _, headers, _ = await call(app, "POST", "/files/", {**TUS, "upload-defer-length": "1"})
    path = path_of(headers["location"])
    disk_events.clear()
    status, _, _ = await call(
        app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "0", "upload-length": "3"}, b"abc",
        events=disk_events,
    )
    assert status == 204
    done = before_response(disk_events)
    assert any(kind == "fsync" and ".info." in p for kind, p in done), disk_events


async def test_without_fsync_nothing_is_flushed(tmp_path, disk_events):
    app = make_app(tmp_path, fsync=False)
    _, headers, _ = await create(app, 10, b"01234")
    await call(app, "PATCH", path_of(headers["location"]), {**TUS, **PATCH_TYPE, "upload-offset": "5"}, b"56789")
    assert not [e for e in disk_events if e[0] in ("fsync", "fdatasync")]


def test_cli_fsync_flag_reaches_the_store():
    from pytusd.server.cli.compose import store_from_args
    from pytusd.server.cli.flags import build_parser

    assert store_from_args(build_parser().parse_args(["--upload-dir", "/tmp/x"])).fsync is False
    assert store_from_args(build_parser().parse_args(["--upload-dir", "/tmp/x", "--fsync"])).fsync is True


# -- a full disk ------------------------------------------------------------------------------------------------------


class Disk:
    """os.pwrite with a capacity: a write past it is cut short, the next one fails with ENOSPC, until more space."""

    def __init__(self, monkeypatch, free: int) -> None:
        self.free = free
        self.failures = 0
        real = os.pwrite

        def pwrite(fd, data, offset):
            if self.free <= 0:
                self.failures += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            view = memoryview(data)[: self.free]
            n = real(fd, view, offset)
            self.free -= n
            return n

        monkeypatch.setattr(os, "pwrite", pwrite)


async def test_full_disk_then_space_back_the_upload_resumes_byte_exact(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="pytusd")
    data = os.urandom(1_000_000)
    disk = Disk(monkeypatch, free=300_000)
    app = make_app(tmp_path)
    status, headers, body = await create(app, len(data), data)
    assert status == 507 and body.startswith(b"ERR_STORAGE_FULL")
    assert headers["upload-offset"] == "300000" and headers["location"]
    path = path_of(headers["location"])
    assert await offset_of(app, path) == 300_000  # truthful: exactly what is stored

    # Still full: every attempt answers 507 and the offset does not move.
    for _ in range(3):
        status, headers, _ = await call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "300000"},
                                        data[300_000:])
        assert status == 507 and headers["upload-offset"] == "300000"
    assert await offset_of(app, path) == 300_000

    # Some space back, then full again part-way, then enough: the client resumes from HEAD each time.
    disk.free = 250_000
    offset = await offset_of(app, path)
    status, headers, _ = await call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": str(offset)},
                                    data[offset:])
    assert status == 507 and headers["upload-offset"] == "550000"
    disk.free = 10_000_000
    offset = await offset_of(app, path)
    assert offset == 550_000
    status, headers, _ = await call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": str(offset)},
                                    data[offset:])
    assert status == 204 and headers["upload-offset"] == str(len(data))
    assert (tmp_path / "data" / path.rsplit("/", 1)[1]).read_bytes() == data
    assert disk.failures >= 4
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a clear answer, no traceback


# -- a read-only disk -------------------------------------------------------------------------------------------------


def refuse_writes(monkeypatch, error: int) -> None:
    """os.open fails for anything that would write, as on a read-only (EROFS) or non-writable (EACCES) folder."""
    real = os.open

    def opener(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(error, os.strerror(error), path)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", opener)


@pytest.mark.parametrize("locker", ["memory", "file"])
async def test_read_only_storage_is_a_clear_500_and_the_upload_resumes_when_writable(
    tmp_path, monkeypatch, caplog, locker
):
    caplog.set_level(logging.INFO, logger="pytusd")
    lockers = {"memory": MemoryLocker(), "file": FileLocker(tmp_path / "data")}
    app = make_app(tmp_path, locker=lockers[locker])
    _, headers, _ = await create(app, 10, b"01234")
    path = path_of(headers["location"])

    with monkeypatch.context() as m:
        refuse_writes(m, errno.EROFS)
        status, headers, body = await call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "5"}, b"56789")
        assert status == 500 and body.startswith(b"ERR_STORAGE_READ_ONLY: the storage is read-only")
        status, _, body = await create(app, 10)
        assert status == 500 and body.startswith(b"ERR_STORAGE_READ_ONLY")
    with monkeypatch.context() as m:
        refuse_writes(m, errno.EACCES)
        status, _, body = await create(app, 10)
        assert status == 500 and body.startswith(b"ERR_STORAGE_READ_ONLY: the storage is not writable")

    assert await offset_of(app, path) == 5  # nothing claimed that is not stored
    status, headers, _ = await call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "5"}, b"56789")
    assert status == 204 and headers["upload-offset"] == "10"
    assert (tmp_path / "data" / path.rsplit("/", 1)[1]).read_bytes() == b"0123456789"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_storage_turning_read_only_mid_write_keeps_the_offset_truthful(tmp_path, monkeypatch):
    app = make_app(tmp_path)
    _, headers, _ = await create(app, 10)
    path = path_of(headers["location"])
    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(fd, memoryview(data)[:4], offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    status, headers, body = await call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "0"}, b"0123456789")
    monkeypatch.setattr(os, "pwrite", real)
    assert status == 500 and body.startswith(b"ERR_STORAGE_READ_ONLY") and headers["upload-offset"] == "4"
    assert await offset_of(app, path) == 4


async def test_a_cancelled_request_waits_for_its_flush_before_closing_the_file(tmp_path, monkeypatch):
    """The flush runs in a thread; the file it flushes must stay open until it is done, even when the request is
    cancelled meanwhile (else the thread could flush a closed, or reused, descriptor)."""
    store = FileStore(tmp_path / "data", fsync=True)
    store.ensure_directory()
    upload = await store.create(UploadInfo(size=5))
    started, seen = threading.Event(), []

    def slow_fdatasync(fd: int) -> None:
        started.set()
        time.sleep(0.3)
        seen.append(os.fstat(fd).st_size)  # raises EBADF if the descriptor was closed under it

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)

    async def body():
        yield b"hello"

    task = asyncio.ensure_future(upload.write(0, body()))
    while not started.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [5]
