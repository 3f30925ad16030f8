"""Hostile clients and broken storage against a real pytusd process.

- slowloris: hundreds of silent connections, request heads sent a byte a second and PATCH bodies sent a byte a
  second; a normal upload goes through meanwhile and every hostile connection is closed after --network-timeout
  (``PYTUSD_SLOWLORIS_CONNECTIONS``, default 300, sets how many; ``PYTUSD_SLOWLORIS_TIMEOUT``, default 2 s, the
  timeout: with thousands of connections this test's own client needs more than 2 s to open them all);
- --max-concurrent-uploads / --max-uploads-per-client: 503 / 429 with Retry-After, the body unread;
- --tls-mode with a self-signed certificate: which TLS versions each mode accepts;
- a real small filesystem (tmpfs, mounted for the test; skipped where mounting is not permitted): full (507), space
  back (the upload resumes byte-exact), read-only (500 ERR_STORAGE_READ_ONLY), writable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest

from .conftest import RawUpload, mounted_tmpfs, tus_patch_headers

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
SLOWLORIS = int(os.environ.get("PYTUSD_SLOWLORIS_CONNECTIONS", "300"))
SLOWLORIS_TIMEOUT = float(os.environ.get("PYTUSD_SLOWLORIS_TIMEOUT", "2"))  # --network-timeout, seconds


def create(url: str, length: int, **kwargs) -> str:
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length)}, **kwargs)
    assert r.status_code == 201, r.text
    return r.headers["location"]


def error_lines(log: str, levels: tuple[str, ...] = ("ERROR", "CRITICAL")) -> list[str]:
    """Log lines at these levels (pytusd's text format: ``level=ERROR``), and tracebacks."""
    return [line for line in log.splitlines()
            if "Traceback" in line or any(f"level={level} " in line for level in levels)]


def ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit (ulimit -Hn) is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # pytusd, started after this, inherits it


# -- slowloris ----------------------------------------------------------------------------------------------------


async def _hostile(kind: str, port: int, path: str, started: float, closed: dict[int, float], index: int) -> None:
    """One hostile connection; records when the server closed it (seconds after ``started``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "silent":
            await reader.read(1)  # b"" once the server closes
        else:
            if kind == "head":
                trickle = f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n".encode() + b"X-Pad: " + b"a" * 60
            else:  # body: a complete head, then the body a byte a second
                writer.write(
                    f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                    "Content-Type: application/offset+octet-stream\r\nContent-Length: 100\r\n\r\n".encode()
                )
                trickle = b"b" * 100
            for byte in trickle:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    continue
                if kind == "body" and data.startswith(b"HTTP/1.1 "):
                    # the answer to a body that is too slow; then the server closes
                    answer = data
                    while data:
                        data = await reader.read(65536)
                        answer += data
                    assert answer.split(b" ", 2)[1] == b"500" and b"ERR_READ_TIMEOUT" in answer, answer
                    break
                if not data:
                    break
                raise AssertionError(f"unexpected answer to a {kind} trickle: {data[:200]!r}")
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        closed[index] = time.monotonic() - started
        writer.close()


_NORMAL_UPLOAD = """
import os, sys, time, httpx
data = os.urandom(int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
with httpx.Client(timeout=30) as client:
    started = time.monotonic()
    r = client.post(sys.argv[1], headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
                                          "Content-Type": "application/offset+octet-stream"}, content=data)
    assert r.status_code == 201 and r.headers["upload-offset"] == str(len(data)), r.text
    elapsed = time.monotonic() - started
    assert client.get(r.headers["location"]).content == data
print(elapsed)
"""


async def _normal_client(base: str, size: int) -> asyncio.subprocess.Process:
    """An ordinary client, in a process of its own (this one is busy with the hostile connections), ready to go."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _NORMAL_UPLOAD, base, str(size), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
    return proc


async def _normal_upload(proc: asyncio.subprocess.Process) -> float:
    """The upload's duration, POST with all the data to 201, as that client measured it."""
    out, _ = await proc.communicate(b"go\n")
    assert proc.returncode == 0
    return float(out)


def test_slowloris_does_not_stop_other_uploads_and_is_closed_after_network_timeout(pytusd_factory):
    ensure_fd_limit(4 * SLOWLORIS + 256)
    timeout = SLOWLORIS_TIMEOUT
    server = pytusd_factory("--network-timeout", f"{timeout:g}s", "--verbose=false")
    per_kind = SLOWLORIS // 3
    kinds = ["silent"] * (SLOWLORIS - 2 * per_kind) + ["head"] * per_kind + ["body"] * per_kind
    with httpx.Client() as client:
        paths = [
            "/files/" + client.post(server.url, headers={**TUS, "Upload-Length": "100"}).headers["location"]
            .rsplit("/", 1)[1]
            for _ in range(per_kind)
        ]
    async def scenario() -> tuple[dict[int, float], float, int]:
        closed: dict[int, float] = {}
        normal_client = await _normal_client(server.url, 16 * 1024 * 1024)
        started = time.monotonic()
        body_paths = iter(paths)
        tasks = [
            asyncio.create_task(
                _hostile(kind, server.port, next(body_paths) if kind == "body" else "/files/x", started, closed, i)
            )
            for i, kind in enumerate(kinds)
        ]
        await asyncio.sleep(0.5)  # every hostile connection is open and trickling
        upload_time = await _normal_upload(normal_client)
        still_open = len(kinds) - len(closed)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return closed, upload_time, still_open

    closed, upload_time, still_open = asyncio.run(scenario())
    # The normal upload went through while every hostile connection was still open.
    assert upload_time < timeout - 0.5 and still_open == len(kinds), (upload_time, still_open)
    by_kind: dict[str, list[float]] = {}
    for i, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(closed[i])
    for kind, times in by_kind.items():
        # Closed after the network timeout (the head's counted from the connection, the body's from its first wait),
        # not before, and not much later.
        assert timeout - 0.3 < min(times) and max(times) < 2 * timeout + 2, (kind, min(times), max(times))
    print(f"\nslowloris: {len(kinds)} connections ({per_kind} head trickles, {per_kind} body trickles), "
          f"16 MiB upload in {upload_time:.2f} s meanwhile; closed after "
          + ", ".join(f"{k} {min(t):.1f}-{max(t):.1f} s" for k, t in by_kind.items()))
    assert error_lines(server.log()) == []
    # The server is fine afterwards, and the trickled bodies' bytes are stored (offsets truthful).
    offsets = [int(httpx.head(server.url + p.rsplit("/", 1)[1], headers=TUS).headers["upload-offset"])
               for p in paths[:5]]
    assert all(0 < o < 100 for o in offsets), offsets


# -- upload slots -------------------------------------------------------------------------------------------------


def test_max_concurrent_uploads_through_the_command(pytusd_factory):
    server = pytusd_factory("--max-concurrent-uploads", "2")
    urls = [create(server.url, 1000) for _ in range(3)]
    paths = ["/files/" + u.rsplit("/", 1)[1] for u in urls]
    holders = [RawUpload(server.port, "PATCH", p, tus_patch_headers(0, 1000)) for p in paths[:2]]
    for holder in holders:
        holder.send(b"x" * 100)
    time.sleep(0.3)

    refused = RawUpload(server.port, "PATCH", paths[2], tus_patch_headers(0, 1000))
    refused.send(b"y" * 1000)
    status, headers, body = refused.response(timeout=5)
    assert status == 503 and body.startswith(b"ERR_TOO_MANY_UPLOADS: ")
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert refused.sock.recv(1) == b""  # closed: its body is not drained
    refused.close()
    assert int(httpx.head(urls[2], headers=TUS).headers["upload-offset"]) == 0
    # Not limited: creation without data, HEAD of another upload, OPTIONS.
    assert create(server.url, 10)
    assert httpx.options(server.url).status_code == 200

    holders[0].send(b"x" * 900)
    assert holders[0].response()[0] == 204
    holders[0].close()
    r = httpx.patch(urls[2], headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                    content=b"z" * 1000)
    assert r.status_code == 204
    holders[1].close()
    assert error_lines(server.log()) == []


def test_tus_js_client_retries_after_503(pytusd_factory, node_client, tmp_path):
    """tus-js-client retries a 503 (any 5xx) with its retryDelays (it ignores Retry-After; a 429 it does not retry
    unless onShouldRetry says so): with the only slot taken, its PATCH is refused, and it succeeds once the slot is
    free."""
    server = pytusd_factory("--max-concurrent-uploads", "1")
    holder_url = create(server.url, 1000)
    holder = RawUpload(server.port, "PATCH", "/files/" + holder_url.rsplit("/", 1)[1], tus_patch_headers(0, 1000))
    holder.send(b"x" * 10)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(300_000))
    proc = subprocess.Popen([*node_client, server.url, str(source), str(tmp_path / "urls.json")],
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while "PATCH" not in server.log() or "-> 503" not in server.log():
        assert time.monotonic() < deadline and proc.poll() is None, server.log()
        time.sleep(0.02)
    holder.send(b"x" * 990)  # the slot is free again; the client's next retry (within 0.5 s) goes through
    assert holder.response()[0] == 204
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    url = json.loads(out)["url"]
    assert httpx.get(url).content == source.read_bytes()
    holder.close()


def test_max_uploads_per_client_behind_a_proxy(pytusd_factory):
    server = pytusd_factory("--max-uploads-per-client", "1", "--behind-proxy")
    urls = [create(server.url, 100) for _ in range(3)]
    paths = ["/files/" + u.rsplit("/", 1)[1] for u in urls]

    def upload(path: str, client_ip: str) -> RawUpload:
        return RawUpload(server.port, "PATCH", path, {**tus_patch_headers(0, 100), "X-Forwarded-For": client_ip})

    first = upload(paths[0], "198.51.100.7")
    first.send(b"x")
    time.sleep(0.3)
    second = upload(paths[1], "198.51.100.7")
    status, headers, body = second.response(timeout=5)
    assert status == 429 and body.startswith(b"ERR_TOO_MANY_CLIENT_UPLOADS") and headers["retry-after"] == "1"
    second.close()
    other = upload(paths[2], "198.51.100.8")
    other.send(b"y" * 100)
    assert other.response()[0] == 204
    other.close()
    first.close()


# -- TLS --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def handshake(port: int, cert: Path, version: ssl.TLSVersion, ciphers: str | None = None) -> str:
    """The negotiated version, or the error, of a client that offers exactly ``version``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cert)
    if version <= ssl.TLSVersion.TLSv1_1:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client speak TLS 1.1 at all
    elif ciphers:
        context.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated: that is the point
        context.minimum_version = context.maximum_version = version
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.version() or ""
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"


@pytest.fixture(scope="module")
def client_speaks_tls11(certificate) -> bool:
    """Whether this machine's OpenSSL lets our test client do TLS 1.1 at all (against a permissive server), so that
    a refusal by pytusd is pytusd's."""
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = ssl.TLSVersion.TLSv1_1
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), server_context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    result = handshake(listener.getsockname()[1], cert, ssl.TLSVersion.TLSv1_1)
    listener.close()
    return result == "TLSv1.1"


@pytest.mark.parametrize(
    ("mode", "accepted"),
    [
        ("", {"TLSv1.2", "TLSv1.3"}),  # the default is tls12, as in tusd
        ("tls13", {"TLSv1.3"}),
        ("tls12-strong", {"TLSv1.2"}),
    ],
)
def test_tls_modes(pytusd_factory, certificate, client_speaks_tls11, mode, accepted):
    cert, key = certificate
    args = ["--tls-certificate", str(cert), "--tls-key", str(key)] + (["--tls-mode", mode] if mode else [])
    server = pytusd_factory(*args)
    versions = {
        "TLSv1.1": ssl.TLSVersion.TLSv1_1, "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3
    }
    if not client_speaks_tls11:
        assert os.environ.get("CI") != "true", "this OpenSSL cannot speak TLS 1.1 even when asked to"
        del versions["TLSv1.1"]
    for name, version in versions.items():
        result = handshake(server.port, cert, version)
        if name in accepted:
            assert result == name, (mode, name, result)
        else:
            # The server's refusal (an alert, or it hung up on the hello), not this client's own.
            assert result.startswith("refused:"), (mode, name, result)
            assert "NO_PROTOCOLS_AVAILABLE" not in result and "NO_CIPHERS_AVAILABLE" not in result, result
    if "TLSv1.2" in accepted:
        # TLS 1.2 without forward secrecy or AEAD (RSA key exchange, CBC): refused in both modes that allow 1.2.
        weak = handshake(server.port, cert, ssl.TLSVersion.TLSv1_2, "AES128-SHA:ECDHE-ECDSA-AES128-SHA")
        assert weak.startswith("refused:"), weak
    if mode == "tls12-strong":
        aes128 = handshake(server.port, cert, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert aes128.startswith("refused:"), aes128
    # A tus upload over HTTPS.
    base = f"https://127.0.0.1:{server.port}/files/"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
        r = client.post(base, headers={**TUS, "Upload-Length": "5", "Content-Type": "application/offset+octet-stream"},
                        content=b"hello")
        assert r.status_code == 201 and r.headers["location"].startswith("https://")
        assert client.get(r.headers["location"]).content == b"hello"


def test_unknown_tls_mode_is_refused_at_start():
    result = subprocess.run(
        [sys.executable, "-m", "pytusd", "--tls-mode", "tls10"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2 and "tls12, tls13 or tls12-strong" in result.stderr


# -- a real small filesystem --------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs at tmp_path/small; unmounted at the end (after the server that uses it has stopped)."""
    with mounted_tmpfs(tmp_path / "small", "size=4m") as mounted:
        yield mounted


def test_full_then_read_only_filesystem_through_the_command(small_fs, pytusd_factory):
    mount_point, remount = small_fs
    server = pytusd_factory(upload_dir=mount_point)
    data = os.urandom(6 * 1024 * 1024)
    patch_headers = {**TUS, "Content-Type": "application/offset+octet-stream"}

    # Full: the client is told so (507), with an offset that is exactly what is stored.
    r = httpx.post(server.url, headers={**patch_headers, "Upload-Length": str(len(data))}, content=data, timeout=30)
    assert r.status_code == 507 and r.text.startswith("ERR_STORAGE_FULL"), r.text
    url = r.headers["location"]
    stored = int(r.headers["upload-offset"])
    data_file = mount_point / url.rsplit("/", 1)[1]
    assert 3 * 1024 * 1024 < stored < 4 * 1024 * 1024 and data_file.stat().st_size == stored
    assert data_file.read_bytes() == data[:stored]
    assert int(httpx.head(url, headers=TUS).headers["upload-offset"]) == stored
    r = httpx.patch(url, headers={**patch_headers, "Upload-Offset": str(stored)}, content=data[stored:], timeout=30)
    assert r.status_code == 507 and r.headers["upload-offset"] == str(stored)

    # Space is back: the upload resumes from the offset HEAD reports and ends byte-exact.
    remount("size=16m")
    offset = int(httpx.head(url, headers=TUS).headers["upload-offset"])
    r = httpx.patch(url, headers={**patch_headers, "Upload-Offset": str(offset)}, content=data[offset:], timeout=30)
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    assert httpx.get(url, timeout=30).content == data

    # Read-only: a clear 500 for writes, /ready says so; writable again, the upload goes on.
    second = create(server.url, 1000)
    r = httpx.patch(second, headers={**patch_headers, "Upload-Offset": "0"}, content=b"a" * 400)
    assert r.status_code == 204
    remount("ro")
    try:
        r = httpx.patch(second, headers={**patch_headers, "Upload-Offset": "400"}, content=b"b" * 600)
        assert r.status_code == 500 and r.text.startswith("ERR_STORAGE_READ_ONLY"), r.text
        r = httpx.post(server.url, headers={**TUS, "Upload-Length": "10"})
        assert r.status_code == 500 and r.text.startswith("ERR_STORAGE_READ_ONLY"), r.text
        assert httpx.get(f"http://127.0.0.1:{server.port}/ready").status_code == 503
    finally:
        remount("rw")
    assert httpx.head(second, headers=TUS).headers["upload-offset"] == "400"
    r = httpx.patch(second, headers={**patch_headers, "Upload-Offset": "400"}, content=b"b" * 600)
    assert r.status_code == 204 and httpx.get(second).content == b"a" * 400 + b"b" * 600
    assert httpx.get(f"http://127.0.0.1:{server.port}/ready").status_code == 200
    log = server.log()
    assert error_lines(log) == []
    assert len(error_lines(log, ("WARNING",))) >= 2 and "ERR_STORAGE_FULL at offset" in log  # logged, as warnings
