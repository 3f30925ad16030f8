"""A slow disk must not stall every connection: with writes taking 200 ms each, an upload streams while a ``HEAD``
on another upload and ``/health`` still answer within 50 ms.

Two ways to make storage slow:

- in-process (:class:`SlowWrites`): TusApp served by pytusd's own server (pytusd.server: HTTP/1.1 on httptools,
  the splice fast path) in a thread, with every write the file store makes into a regular file - ``pwrite``, ``pwritev``, ``write``,
  ``splice`` into a file - delayed at the OS-call level (the ``os`` module of the modules that make those calls is
  wrapped). Both body paths: splice(2) and chunks.
- a real slow filesystem: the ``pytusd`` command on a FUSE mount whose writes sleep (``slowfs.py``), with the
  default ``--file-io auto`` (which must see FUSE and choose threads). Needs root, /dev/fuse and fusepy.

Each also runs the same probes with ``file_io="inline"``, asserting that the stall is there: the test can fail.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pytusd.fileio
import pytusd.server.splice
import pytusd.stores.file
from pytusd import Config, FileLocker, FileStore, TusApp

from ..conftest import serve_in_thread

WRITE_DELAY = 0.2  # seconds per write
FAST = WRITE_DELAY / 2  # "answers at once": well under one write (a probe that waited for one takes ~WRITE_DELAY)
STALLED = 0.15  # a probe this slow shows the loop waited for a write
PIECE = 64 * 1024  # the streaming PATCH sends its body in pieces of this size ...
PIECES = 40  # ... this many of them ...
INTERVAL = 0.05  # ... this far apart (2.5 MiB over 2 s)
HERE = Path(__file__).parent
LOOP_THREAD = "tus-event-loop"  # the in-process server's thread


# -- the slow OS calls --------------------------------------------------------------------------------------------


class SlowWrites:
    """Stands for the ``os`` module in the modules of the file store's I/O: every write into a regular file takes
    WRITE_DELAY seconds longer (in the thread that makes it); everything else is ``os`` itself."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.writes = 0
        self.threads: set[str] = set()  # names of the threads that waited

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _wait(self, fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self.writes += 1
            self.threads.add(threading.current_thread().name)
            time.sleep(self.delay)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._wait(fd)
        return os.pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: Any, offset: int, *args: Any) -> int:
        self._wait(fd)
        return os.pwritev(fd, buffers, offset, *args)

    def write(self, fd: int, data: Any) -> int:
        self._wait(fd)
        return os.write(fd, data)

    def splice(self, src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        self._wait(dst)
        return os.splice(src, dst, count, *args, **kwargs)


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> SlowWrites:
    slow = SlowWrites(WRITE_DELAY)
    for module in (pytusd.fileio, pytusd.stores.file, pytusd.server.splice):
        monkeypatch.setattr(module, "os", slow)
    return slow


# -- a client that streams a PATCH, and the probes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def create_upload(port: int, size: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 201, response.status
    return "/files/" + response.getheader("Location").rstrip("/").rsplit("/", 1)[1]


class StreamingPatch(threading.Thread):
    """A PATCH whose body (PIECES x PIECE bytes) is sent a piece every INTERVAL seconds."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.body = port, path, body
        self.started_sending = threading.Event()
        self.status: int | None = None
        self.offset: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                head = (f"PATCH {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                        f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                        f"Content-Length: {len(self.body)}\r\n\r\n").encode()
                sock.sendall(head)
                self.started_sending.set()
                for i in range(0, len(self.body), PIECE):
                    sock.sendall(self.body[i:i + PIECE])
                    time.sleep(INTERVAL)
                response = http.client.HTTPResponse(sock)
                response.begin()
                response.read()
                self.status, self.offset = response.status, response.getheader("Upload-Offset")
        except BaseException as exc:
            self.error = exc
        finally:
            self.started_sending.set()


def probe_while_streaming(port: int, streaming: StreamingPatch, other: str) -> dict[str, list[float]]:
    """HEAD on ``other`` and GET /health, one after the other every 0.1 s while ``streaming`` runs: latencies."""
    latencies: dict[str, list[float]] = {"HEAD": [], "/health": []}
    connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for name in latencies}
    requests = {"HEAD": ("HEAD", other, {"Tus-Resumable": "1.0.0"}), "/health": ("GET", "/health", {})}
    streaming.started_sending.wait(10)
    time.sleep(0.3)  # the body is flowing and writes are under way
    try:
        while streaming.is_alive():
            for name, (method, path, headers) in requests.items():
                if not streaming.is_alive():  # only probes sent while the upload streams count
                    break
                t0 = time.perf_counter()
                connections[name].request(method, path, headers=headers)
                response = connections[name].getresponse()
                response.read()
                latencies[name].append(time.perf_counter() - t0)
                assert response.status == 200, (name, response.status)
            time.sleep(0.1)
    finally:
        for conn in connections.values():
            conn.close()
    return latencies


def stream_and_probe(port: int, size: int = PIECES * PIECE) -> tuple[dict[str, list[float]], StreamingPatch]:
    other = create_upload(port, 1000)
    target = create_upload(port, size)
    streaming = StreamingPatch(port, target, os.urandom(size))
    streaming.start()
    latencies = probe_while_streaming(port, streaming, other)
    streaming.join(120)
    assert not streaming.is_alive()
    assert streaming.error is None, streaming.error
    return latencies, streaming


def summary(latencies: dict[str, list[float]]) -> str:
    return ", ".join(f"{name}: {len(v)} probes, max {max(v) * 1000:.0f} ms" for name, v in latencies.items() if v)


def assert_answered_at_once(latencies: dict[str, list[float]]) -> None:
    print(f"threads: {summary(latencies)}")  # shown with -s
    for name, values in latencies.items():
        assert len(values) >= 5, f"too few {name} probes overlapped the upload ({summary(latencies)})"
        assert max(values) < FAST, f"{name} waited for the slow writes ({summary(latencies)})"


def assert_stalled(latencies: dict[str, list[float]]) -> None:
    print(f"inline: {summary(latencies)}")  # shown with -s
    worst = max((max(v) for v in latencies.values() if v), default=0.0)
    assert worst >= STALLED, f"no stall seen: the probes cannot tell inline from threads ({summary(latencies)})"


# -- in-process: TusApp on pytusd's own server, writes slowed at the OS-call level --------------------------------


@pytest.fixture(params=["splice", "chunks"])
def body_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "chunks":
        monkeypatch.setattr(pytusd.server.splice, "CAN_SPLICE", False)
    elif not pytusd.server.splice.CAN_SPLICE:
        pytest.skip("splice(2) is not available here (or PYTUSD_NO_SPLICE is set)")
    return request.param


def app_for(directory: Path, file_io: str) -> TusApp:
    return TusApp(Config(store=FileStore(directory, file_io=file_io), locker=FileLocker(directory, file_io=file_io),
                         base_path="/files/"))


def test_threads_an_upload_on_slow_storage_holds_up_no_other_request(tmp_path, slow_writes, body_path):
    app = app_for(tmp_path, "threads")
    with serve_in_thread(app) as port:
        latencies, streaming = stream_and_probe(port)
    assert streaming.status == 204 and streaming.offset == str(PIECES * PIECE)
    assert slow_writes.writes >= 3, "the writes were not slowed"
    assert LOOP_THREAD not in slow_writes.threads, slow_writes.threads  # the loop never waited for a write
    assert_answered_at_once(latencies)


def test_inline_the_same_upload_stalls_every_request(tmp_path, slow_writes, body_path):
    app = app_for(tmp_path, "inline")
    with serve_in_thread(app) as port:
        latencies, streaming = stream_and_probe(port)
    assert streaming.status == 204 and streaming.offset == str(PIECES * PIECE)
    assert LOOP_THREAD in slow_writes.threads
    assert_stalled(latencies)


def test_store_and_locker_calls_leave_the_loop_in_threads_mode(tmp_path, slow_writes):
    """The calls that are not a body's writes (create, the .info, termination, declare-length, locks, the cleaner's
    listing) go to the pool too: with every write slowed, the loop thread itself never waits for one."""
    import asyncio

    from pytusd.info import UploadInfo

    async def exercise() -> None:
        store, locker = FileStore(tmp_path, file_io="threads"), FileLocker(tmp_path, file_io="threads")
        await store.ready()
        await locker.ready()
        upload = await store.create(UploadInfo(size=10, size_is_deferred=False))
        upload_id = (await upload.info()).id
        deferred = await store.create(UploadInfo(size=0, size_is_deferred=True))
        await deferred.declare_length(5)
        lock = await locker.acquire(upload_id, lambda: None, 5)

        async def body():
            yield b"hello"
            yield b"world"

        assert await (await store.get(upload_id)).write(0, body()) == 10
        await lock.release()
        assert [b async for b in (await store.get(upload_id)).reader()] == [b"helloworld"]
        assert sorted([i async for i in store.upload_ids()]) == sorted([upload_id, (await deferred.info()).id])
        await deferred.expire()
        await (await store.get(upload_id)).terminate()
        assert await store.forget_expired(time.time() + 10) == 1

    loop_thread = threading.current_thread().name
    asyncio.run(exercise())
    assert slow_writes.writes >= 4
    assert loop_thread not in slow_writes.threads, slow_writes.threads


# -- the real command on a slow FUSE filesystem -------------------------------------------------------------------


def _fuse_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "FUSE mounts: Linux only"
    if os.geteuid() != 0:
        return "mounting FUSE here needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import fuse  # noqa: F401 - fusepy, which needs libfuse 2
    except (ImportError, OSError, EnvironmentError) as exc:
        # Installable (scripts/test installs both), unlike root or /dev/fuse: under CI a missing one is a failure.
        if os.environ.get("CI") == "true":
            pytest.fail(f"fusepy/libfuse unavailable in CI (scripts/test installs them): {exc}")
        return f"fusepy/libfuse unavailable: {exc}"
    return None


@pytest.fixture
def slow_mount(tmp_path: Path) -> Iterator[Path]:
    reason = _fuse_unavailable()
    if reason:
        pytest.skip(reason)
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mount.mkdir()
    log = open(tmp_path / "slowfs.log", "wb")
    daemon = subprocess.Popen([sys.executable, str(HERE / "slowfs.py"), str(backing), str(mount),
                               "--write-delay", str(WRITE_DELAY)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mount):
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"the FUSE mount did not come up: {(tmp_path / 'slowfs.log').read_text()[-500:]}")
            time.sleep(0.05)
        yield mount
    finally:
        if os.path.ismount(mount):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


@contextlib.contextmanager
def pytusd_command(upload_dir: Path, log_path: Path, *flags: str) -> Iterator[int]:
    port = free_port()
    command = shutil.which("pytusd", path=os.path.dirname(sys.executable)) or "pytusd"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([command, "--host", "127.0.0.1", "--port", str(port), "--upload-dir",
                                 str(upload_dir), *flags], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_command_on_a_slow_fuse_filesystem_chooses_threads_and_stays_responsive(slow_mount, tmp_path):
    log = tmp_path / "pytusd.log"
    size = 20 * PIECE  # FUSE writes 128 KiB per request: 200 ms each
    with pytusd_command(slow_mount / "data", log) as port:
        latencies, streaming = stream_and_probe(port, size)
    assert "file I/O threads: fuse" in log.read_text(), log.read_text()[-2000:]  # auto saw the FUSE mount
    assert streaming.status == 204 and streaming.offset == str(size), log.read_text()[-2000:]
    assert_answered_at_once(latencies)


def test_command_on_a_slow_fuse_filesystem_inline_stalls(slow_mount, tmp_path):
    log = tmp_path / "pytusd.log"
    size = 20 * PIECE
    with pytusd_command(slow_mount / "data", log, "--file-io", "inline") as port:
        latencies, streaming = stream_and_probe(port, size)
    assert streaming.status == 204 and streaming.offset == str(size)
    assert_stalled(latencies)
