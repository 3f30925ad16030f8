"""A real ``pytusd`` process per test, on a free port of 127.0.0.1, stopped by its own PID."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "e2e" / "node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PytusdProcess:
    """The server ``command`` (by default ``python -m pytusd``; tusd takes the same flags) on 127.0.0.1."""

    command: tuple[str, ...] = (sys.executable, "-m", "pytusd")

    def __init__(self, upload_dir: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                 command: tuple[str, ...] | None = None) -> None:
        self.upload_dir = upload_dir
        self.args = args
        self.env = env
        if command is not None:
            self.command = command
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/files/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = upload_dir.parent / f"pytusd-{self.port}.log"

    def start(self) -> PytusdProcess:
        cmd = [
            *self.command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--upload-dir",
            str(self.upload_dir),
            *self.args,
        ]
        self._log = open(self.log_path, "ab")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command[-1]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pytusd did not listen on {self.port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        self.proc = None

    def rss_peak_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")


# The line tusd prints on stdout once it listens; tusd's own e2e suite (internal/e2e) reads the upload URL and the
# listening address from it.
TUSD_STARTUP_LINE = re.compile(r"You can now upload files to: (https?://([^/]+)/\S*)")


def listening_tcp_ports(pid: int) -> list[int]:
    """The TCP ports that process ``pid`` listens on (Linux: its socket inodes looked up in /proc/net/tcp{,6})."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


class TusdStyleProcess(PytusdProcess):
    """pytusd started the way tusd's e2e suite starts tusd: ``-port=0`` followed by nothing but the test's own tusd
    flags, in ``workdir`` (so tusd's default upload directory ``./data`` is ``workdir/data``). stdout (where tusd
    prints its startup line) and stderr go to separate files.

    Ready when tusd's startup line names the upload URL (then :attr:`url` and :attr:`address` come from it, as in
    tusd's suite) or, failing that, when the process listens on a TCP port that accepts a connection (then
    :attr:`address` is ``127.0.0.1:<that port>``). :attr:`startup_line` says which of the two it was."""

    def __init__(self, workdir: Path, *args: str) -> None:
        super().__init__(workdir / "data", *args, port=free_port())
        self.workdir = workdir
        self.log_path = workdir / "pytusd-tusd-flags.stdout"
        self.err_path = workdir / "pytusd-tusd-flags.stderr"
        self.address = ""
        self.startup_line: str | None = None

    def start(self) -> TusdStyleProcess:
        cmd = [sys.executable, "-m", "pytusd", "-port=0", *self.args]
        self._log = open(self.log_path, "ab")
        self._err = open(self.err_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=self._log, stderr=self._err)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pytusd exited with {self.proc.returncode}:\n{self.log()}")
            match = TUSD_STARTUP_LINE.search(self.stdout())
            if match:
                self.startup_line, self.url, self.address = match.group(0), match.group(1), match.group(2)
                self.port = int(self.address.rsplit(":", 1)[1])
                return self
            for port in listening_tcp_ports(self.proc.pid):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pass
                except OSError:
                    continue
                self.port, self.address = port, f"127.0.0.1:{port}"
                self.url = f"http://{self.address}/files/"
                return self
            time.sleep(0.05)
        raise RuntimeError(f"pytusd did not listen within 15 s:\n{self.log()}")

    def stdout(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log(self) -> str:
        err = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        return f"--- stdout\n{self.stdout()}--- stderr\n{err}"

    def stop(self) -> None:
        if self.proc is not None:
            super().stop()
            self._err.close()


@pytest.fixture
def pytusd_factory(tmp_path):
    """``factory(*flags)``: a started :class:`PytusdProcess`; with ``tusd_style=True`` a :class:`TusdStyleProcess`
    (only ``-port=0`` and ``flags``, in ``tmp_path``). All are stopped at the end of the test."""
    started: list[PytusdProcess] = []

    def factory(*args: str, upload_dir: Path | None = None, port: int | None = None,
                tusd_style: bool = False) -> PytusdProcess:
        server: PytusdProcess
        if tusd_style:
            server = TusdStyleProcess(tmp_path, *args)
        else:
            server = PytusdProcess(upload_dir or tmp_path / "data", *args, port=port)
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def pytusd(pytusd_factory) -> PytusdProcess:
    return pytusd_factory()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made by openssl, which scripts/test installs)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.fail(f"openssl could not make a test certificate: {made.stderr.decode()}")
    return cert, key


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """The command that runs tests/e2e/node/upload.mjs with tus-js-client installed by scripts/test."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "tus-js-client").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("node and tus-js-client are required in CI (scripts/test installs them)")
        pytest.skip("node or tus-js-client missing: run scripts/test")
    return [node, str(NODE_DIR / "upload.mjs")]


class RawUpload:
    """A PATCH (or POST) written by hand on a socket, so a test controls exactly when each byte is sent."""

    def __init__(self, port: int, method: str, path: str, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        self.sock.settimeout(timeout)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response: {raw!r}")
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status_line.split()[1]), headers, body

    def close(self) -> None:
        self.sock.close()


def tus_patch_headers(offset: int, length: int) -> dict[str, str]:
    return {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(length),
    }


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str):
    """A tmpfs mounted at ``mount_point`` with ``options`` (skipped where mounting is not permitted), and a function
    that remounts it with other options; unmounted at the end (after the server that uses it has stopped)."""
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")

    def remount(more: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{more}", str(mount_point)], check=True)

    try:
        yield mount_point, remount
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


class ThrottlingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` ("host:port"), standing in for the toxiproxy of tusd's suite.

    Client-to-server bytes pass at ``rate`` KB/s (1 KB = 1000 bytes), a tenth of a second's worth at a time, each
    slice delivered only once the time its bytes need at that rate has passed (toxiproxy's "bandwidth" toxic on the
    upstream). With ``limit``, a connection is cut (both sockets closed) as soon as ``limit`` bytes went upstream on
    it (toxiproxy's "limit_data"). Server-to-client bytes are not held up."""

    def __init__(self, upstream: str, rate: int, limit: int | None = None) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host.strip("[]"), int(port))
        self.rate = rate * 1000
        self.limit = limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listen = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client), daemon=True).start()

    def _upstream(self, src: socket.socket, dst: socket.socket) -> None:
        sent, due = 0, time.monotonic()
        try:
            while True:
                want = self.rate // 10
                if self.limit is not None:
                    want = min(want, self.limit - sent)
                data = src.recv(want)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                due = max(due, time.monotonic()) + len(data) / self.rate
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
                sent += len(data)
                if self.limit is not None and sent >= self.limit:
                    self._cut(src, dst)
                    return
        except OSError:
            self._cut(src, dst)

    def _downstream(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            self._cut(src, dst)

    @staticmethod
    def _cut(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread; close() alone does not
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.listener.close()
        self._cut(*self.sockets)


@pytest.fixture
def toxiproxy():
    proxies: list[ThrottlingProxy] = []

    def make(upstream: str, rate: int, limit: int | None = None) -> ThrottlingProxy:
        proxy = ThrottlingProxy(upstream, rate, limit)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
