"""``pytusd --workers N``: several processes on one port, sharing the uploads through the file locker.

The parent accepts the connections and hands each to the worker with the fewest open ones. Which worker holds a
connection is read from /proc (the socket inodes in each worker's fds against /proc/net/tcp), so nothing new is
exposed for the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RawUpload, free_port, tus_patch_headers

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

TUS = {"Tus-Resumable": "1.0.0"}


class Connection(RawUpload):
    """A connection with nothing sent yet."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def head(self, path: str) -> tuple[int, dict[str, str]]:
        """HEAD ``path``: the status and headers (a HEAD response has no body, whatever its Content-Length)."""
        self.sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before a response: {raw!r}"
            raw += chunk
        status_line, *lines = raw.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        return int(status_line.split()[1]), {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def create(url: str, length: int) -> str:
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length)})
    assert r.status_code == 201, r.text
    return r.headers["location"]


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wait_for_workers(pid: int, count: int, log: Path, timeout: float = 15) -> list[int]:
    """The PIDs of the workers, once all are ready (the parent's socket accepts connections before that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"{count} workers ready" in log.read_text():
            kids = children(pid)
            assert len(kids) == count
            return kids
        time.sleep(0.05)
    raise AssertionError(f"expected {count} workers, have {children(pid)}:\n{log.read_text()}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _accepted(port: int) -> dict[str, int]:
    """Server-side ESTABLISHED connections on ``port``: socket inode -> the client's port."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":
            out[fields[9]] = int(fields[2].split(":")[1], 16)
    return out


def connections_by_worker(server_port: int, workers: list[int]) -> dict[int, set[int]]:
    """Per worker PID: the client ports of the connections it has accepted."""
    accepted = _accepted(server_port)
    return {pid: {accepted[i] for i in _socket_inodes(pid) if i in accepted} for pid in workers}


def owner_of(upload: RawUpload, server_port: int, workers: list[int], timeout: float = 5) -> int:
    client_port = upload.sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, ports in connections_by_worker(server_port, workers).items():
            if client_port in ports:
                return pid
        time.sleep(0.02)
    raise AssertionError("no worker holds the connection")


def wait_for_size(path: Path, at_least: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {at_least} bytes")


def test_two_workers_share_the_port_and_the_uploads(pytusd_factory):
    server = pytusd_factory("--workers", "2")
    workers = wait_for_workers(server.proc.pid, 2, server.log_path)
    assert server.proc.pid not in workers
    uploads = []
    for i in range(24):  # each held open mid-body, so every connection stays with its worker while we look
        data = os.urandom(10_000 + i)
        url = create(server.url, len(data))
        raw = RawUpload(server.port, "PATCH", "/files/" + url.rsplit("/", 1)[1], tus_patch_headers(0, len(data)))
        raw.send(data[:5000])
        uploads.append((url, data, raw))
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while True:
        per_worker = connections_by_worker(server.port, workers)
        if sum(len(p) for p in per_worker.values()) >= 24 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(len(p) for p in per_worker.values()) == 24
    counts = sorted(len(p) for p in per_worker.values())
    assert counts[1] - counts[0] <= 2, f"the parent spreads the connections evenly: {per_worker}"
    for url, data, raw in uploads:
        raw.send(data[5000:])
        status, headers, _ = raw.response()
        assert status == 204 and int(headers["upload-offset"]) == len(data)
        raw.close()
    with httpx.Client() as client:
        for url, data, _ in uploads:
            assert client.get(url).content == data

    # /metrics sums every worker (prometheus multiprocess mode in a directory the parent made), whichever answers.
    for _ in range(4):
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        created = [ln for ln in text.splitlines() if ln.startswith("tusd_uploads_created ")]
        assert created == ["tusd_uploads_created 24.0"], created
    metrics_dirs = {  # each worker writes <kind>_<pid>.db there
        path.parent for pid in workers for path in Path(tempfile.gettempdir()).glob(f"pytusd-metrics-*/*_{pid}.db")
    }
    assert len(metrics_dirs) == 1
    server.stop()
    assert not os.path.exists(metrics_dirs.pop()), "the parent removes its metrics directory"


def test_lock_handover_between_workers(pytusd_factory):
    server = pytusd_factory("--workers", "2")
    workers = wait_for_workers(server.proc.pid, 2, server.log_path)
    data = os.urandom(1000)
    url = create(server.url, 1000)
    upload_id = url.rsplit("/", 1)[1]
    hanging = RawUpload(server.port, "PATCH", f"/files/{upload_id}", tus_patch_headers(0, 1000))
    hanging.send(data[:400])
    wait_for_size(server.upload_dir / upload_id, 400)
    holder = owner_of(hanging, server.port, workers)

    # A connection that the *other* worker accepted.
    spare = []
    while True:
        conn = Connection(server.port)
        if owner_of(conn, server.port, workers) != holder:
            break
        spare.append(conn)
        assert len(spare) < 50, "the other worker never accepted a connection"
    for s in spare:
        s.close()

    started = time.monotonic()
    status, headers = conn.head(f"/files/{upload_id}")
    assert status == 200 and headers["upload-offset"] == "400"
    assert time.monotonic() - started < 5

    status, headers, body = hanging.response()
    assert status == 400 and body.startswith(b"ERR_UPLOAD_INTERRUPTED")
    hanging.close()

    conn.send(
        (
            f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 400\r\n"
            "Content-Type: application/offset+octet-stream\r\nContent-Length: 600\r\n\r\n"
        ).encode()
        + data[400:]
    )
    status, headers, _ = conn.response()
    assert status == 204 and headers["upload-offset"] == "1000"
    conn.close()
    assert httpx.get(url).content == data


def _start_in_own_session(upload_dir: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = upload_dir.parent / f"pytusd-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--host", "127.0.0.1", "--port", str(port), "--upload-dir", str(upload_dir),
         *args],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_for_workers(proc.pid, 2, log)
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health")
            return proc, port, log
        except httpx.TransportError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)


@pytest.mark.parametrize("to", ["parent", "group"])
def test_sigterm_stops_every_worker_gracefully(tmp_path, to):
    """SIGTERM to the parent (docker, kubernetes) or to the whole process group (systemd's default, Ctrl-C): open
    uploads store what they have and answer 503, every worker ends, the parent exits 0."""
    upload_dir = tmp_path / "data"
    proc, port, log = _start_in_own_session(upload_dir, "--workers", "2", "--shutdown-timeout", "5s")
    try:
        workers = wait_for_workers(proc.pid, 2, log)
        size = 4 * 1024 * 1024
        opened = []
        for _ in range(6):
            url = create(f"http://127.0.0.1:{port}/files/", size)
            upload_id = url.rsplit("/", 1)[1]
            raw = RawUpload(port, "PATCH", f"/files/{upload_id}", tus_patch_headers(0, size))
            raw.send(b"x" * 100_001)
            opened.append((upload_id, raw))
        for upload_id, _ in opened:
            wait_for_size(upload_dir / upload_id, 100_001)
        assert all(connections_by_worker(port, workers).values())

        if to == "parent":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        for upload_id, raw in opened:
            status, _, body = raw.response()
            assert status == 503 and body.startswith(b"ERR_SERVER_SHUTDOWN"), log.read_text()
            raw.close()
            assert (upload_dir / upload_id).stat().st_size == 100_001
        assert proc.wait(15) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists(), f"worker {pid} still runs"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_crashed_worker_is_replaced(pytusd_factory):
    server = pytusd_factory("--workers", "2")
    workers = wait_for_workers(server.proc.pid, 2, server.log_path)
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        now = children(server.proc.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert "starting a new one" in server.log()
    for _ in range(10):  # both workers serve
        url = create(server.url, 3)
        r = httpx.patch(url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                        content=b"abc")
        assert r.status_code == 204


def test_memory_locker_is_refused(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pytusd", "--workers", "2", "--locker", "memory", "--upload-dir", str(tmp_path),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 2
    assert "memory locker cannot coordinate processes" in r.stderr


def test_configuration_error_is_reported_once(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pytusd", "--workers", "3", "--s3-bucket", "a", "--gcs-bucket", "b", "--locker", "file",
         "--upload-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.count("choose one storage") == 1


def test_unix_socket_and_tls(tmp_path, tls_cert):
    sock_path = tmp_path / "tus.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--workers", "2", "--unix-sock", str(sock_path), "--upload-dir",
         str(tmp_path / "d")],
        stdout=open(tmp_path / "unix.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for_workers(proc.pid, 2, tmp_path / "unix.log")
        transport = httpx.HTTPTransport(uds=str(sock_path))
        with httpx.Client(transport=transport, base_url="http://tus.local") as client:
            for _ in range(4):
                r = client.post("/files/", headers={**TUS, "Upload-Length": "3"})
                assert r.status_code == 201 and r.headers["location"].startswith("http://tus.local/files/")
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert not sock_path.exists(), "the parent removes its socket"

    cert, key = tls_cert
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
         "--upload-dir", str(tmp_path / "d"), "--tls-certificate", str(cert), "--tls-key", str(key)],
        stdout=open(tmp_path / "tls.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for_workers(proc.pid, 2, tmp_path / "tls.log")
        for _ in range(4):  # new connections: both workers do TLS
            r = httpx.post(f"https://127.0.0.1:{port}/files/", headers={**TUS, "Upload-Length": "1"}, verify=False)
            assert r.status_code == 201 and r.headers["location"].startswith(f"https://127.0.0.1:{port}/files/")
        for _ in range(4):  # and HTTP/2 by ALPN
            with httpx.Client(http2=True, verify=False) as client:
                r = client.post(f"https://127.0.0.1:{port}/files/", headers={**TUS, "Upload-Length": "1"})
                assert r.status_code == 201 and r.http_version == "HTTP/2"
        # A client that never completes the handshake does not stop the others.
        with socket.create_connection(("127.0.0.1", port)) as bad:
            bad.sendall(b"GET / HTTP/1.1\r\n\r\n")
            r = httpx.post(f"https://127.0.0.1:{port}/files/", headers={**TUS, "Upload-Length": "1"}, verify=False)
            assert r.status_code == 201
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
