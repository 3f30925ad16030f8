"""The pytusd process itself: lock handover, graceful shutdown and restart, timeouts, memory, the command line."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RawUpload, free_port, tus_patch_headers

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


def create(url: str, length: int) -> str:
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length)})
    assert r.status_code == 201, r.text
    return r.headers["location"]


def offset_of(url: str) -> int:
    r = httpx.head(url, headers=TUS)
    assert r.status_code == 200
    return int(r.headers["upload-offset"])


def wait_for_offset(url: str, at_least: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Poll the file itself: a HEAD would take the lock and interrupt the upload under test.
        offset = os.stat(url).st_size
        if offset >= at_least:
            return offset
        time.sleep(0.02)
    raise AssertionError(f"offset did not reach {at_least}")


@pytest.mark.parametrize("locker", ["memory", "file"])
def test_lock_handover_to_a_newer_request(pytusd_factory, locker):
    server = pytusd_factory("--locker", locker)
    url = create(server.url, 1000)
    path = "/files/" + url.rsplit("/", 1)[1]
    data = os.urandom(1000)

    hanging = RawUpload(server.port, "PATCH", path, tus_patch_headers(0, 1000))
    hanging.send(data[:400])
    wait_for_offset(str(server.upload_dir / path.rsplit("/", 1)[1]), 400)

    # A newer request for the same upload asks the hanging PATCH to let go, and gets the truth.
    started = time.monotonic()
    head = httpx.head(url, headers=TUS, timeout=10)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "400"
    assert time.monotonic() - started < 5

    status, headers, body = hanging.response()
    assert status == 400
    assert body.startswith(b"ERR_UPLOAD_INTERRUPTED")
    assert headers.get("connection") == "close"
    hanging.close()

    r = httpx.patch(
        url, headers={**TUS, "Upload-Offset": "400", "Content-Type": "application/offset+octet-stream"}, content=data[400:]
    )
    assert r.status_code == 204 and r.headers["upload-offset"] == "1000"
    assert httpx.get(url).content == data


def test_concurrent_patches_never_interleave(pytusd):
    url = create(pytusd.url, 2000)
    path = "/files/" + url.rsplit("/", 1)[1]
    first = RawUpload(pytusd.port, "PATCH", path, tus_patch_headers(0, 1000))
    first.send(b"a" * 500)
    wait_for_offset(str(pytusd.upload_dir / path.rsplit("/", 1)[1]), 500)
    # The second PATCH at offset 0 takes over the lock, then finds the offset moved on: 409, nothing written.
    second = httpx.patch(
        url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}, content=b"b" * 10
    )
    assert second.status_code == 409
    first.send(b"a" * 500)  # too late: the first request was interrupted
    status, _, _ = first.response()
    assert status == 400
    assert httpx.get(url).content == b"a" * 500


def test_graceful_shutdown_and_byte_exact_resume_after_restart(pytusd_factory, tmp_path):
    server = pytusd_factory("--shutdown-timeout", "5s")
    size = 8 * 1024 * 1024
    data = os.urandom(size)
    url = create(server.url, size)
    upload_id = url.rsplit("/", 1)[1]
    open_upload = RawUpload(server.port, "PATCH", f"/files/{upload_id}", tus_patch_headers(0, size))
    open_upload.send(data[: 3 * 1024 * 1024 + 17])
    wait_for_offset(str(server.upload_dir / upload_id), 3 * 1024 * 1024 + 17)

    server.signal(signal.SIGTERM)
    status, _, body = open_upload.response()
    assert status == 503
    assert body.startswith(b"ERR_SERVER_SHUTDOWN")
    assert server.wait(10) == 0  # as tusd: a graceful stop is a clean exit
    open_upload.close()

    restarted = pytusd_factory(port=server.port)
    offset = offset_of(url)
    assert offset == 3 * 1024 * 1024 + 17
    r = httpx.patch(
        url,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        content=data[offset:],
        timeout=30,
    )
    assert r.status_code == 204 and int(r.headers["upload-offset"]) == size
    stored = (restarted.upload_dir / upload_id).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()


def _stuck_download(server) -> socket.socket:
    """A GET of a large upload whose client never reads: the server cannot finish the response on its own."""
    size = 64 * 1024 * 1024
    url = create(server.url, size)
    chunk = os.urandom(1024 * 1024)
    upload = RawUpload(server.port, "PATCH", "/files/" + url.rsplit("/", 1)[1], tus_patch_headers(0, size))
    for _ in range(64):
        upload.send(chunk)
    assert upload.response()[0] == 204
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /files/{url.rsplit('/', 1)[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(0.5)
    return sock


def test_shutdown_timeout_bounds_the_wait(pytusd_factory):
    server = pytusd_factory("--shutdown-timeout", "2s")
    sock = _stuck_download(server)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.wait(10)
    assert time.monotonic() - started < 6
    sock.close()


def test_second_signal_exits_at_once(pytusd_factory):
    server = pytusd_factory("--shutdown-timeout", "60s")
    sock = _stuck_download(server)
    server.signal(signal.SIGTERM)
    time.sleep(1)
    assert server.proc.poll() is None  # still draining the stuck download
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.wait(10)
    assert time.monotonic() - started < 3
    sock.close()


def test_silent_upload_times_out_but_slow_one_does_not(pytusd_factory):
    server = pytusd_factory("--network-timeout", "1s")
    url = create(server.url, 100)
    path = "/files/" + url.rsplit("/", 1)[1]

    silent = RawUpload(server.port, "PATCH", path, tus_patch_headers(0, 100))
    silent.send(b"x" * 10)
    started = time.monotonic()
    status, _, body = silent.response(timeout=10)
    assert status == 500 and body.startswith(b"ERR_READ_TIMEOUT")
    assert 0.8 < time.monotonic() - started < 5
    silent.close()
    assert offset_of(url) == 10

    slow = RawUpload(server.port, "PATCH", path, tus_patch_headers(10, 90))
    for _ in range(9):  # 3.6 s in all, never silent for a whole second
        slow.send(b"y" * 10)
        time.sleep(0.4)
    status, headers, _ = slow.response()
    assert status == 204 and headers["upload-offset"] == "100"


@pytest.mark.parametrize("first_bytes", [b"", b"HEAD /files/x HTTP/1.1\r\nHo"])
def test_idle_connection_is_closed_after_network_timeout(pytusd_factory, first_bytes):
    """Silent before a request, or stuck half-way through its headers: closed after --network-timeout."""
    server = pytusd_factory("--network-timeout", "1s")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    sock.sendall(first_bytes)
    started = time.monotonic()
    assert sock.recv(1) == b""  # the server closed it
    assert 0.8 < time.monotonic() - started < 5
    sock.close()


def test_idle_keep_alive_connection_is_closed_after_network_timeout(pytusd_factory):
    server = pytusd_factory("--network-timeout", "1s")
    request = RawUpload(server.port, "OPTIONS", "/files/", {})
    status, headers, _ = request.response()
    assert status == 200 and headers.get("connection") != "close"
    started = time.monotonic()
    assert request.sock.recv(1) == b""
    assert 0.8 < time.monotonic() - started < 5
    request.close()


def test_memory_stays_flat_for_a_large_upload(pytusd):
    size = 768 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    url = create(pytusd.url, size)
    httpx.head(url, headers=TUS)  # warm up
    baseline = pytusd.rss_peak_kib()
    upload = RawUpload(pytusd.port, "PATCH", "/files/" + url.rsplit("/", 1)[1], tus_patch_headers(0, size))
    for _ in range(size // len(chunk)):
        upload.send(chunk)
    status, headers, _ = upload.response()
    assert status == 204 and int(headers["upload-offset"]) == size
    growth_mib = (pytusd.rss_peak_kib() - baseline) / 1024
    assert growth_mib < 48, f"peak RSS grew by {growth_mib:.0f} MiB for a {size >> 20} MiB upload"


def test_creation_with_upload_streams_too(pytusd):
    size = 256 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    baseline = pytusd.rss_peak_kib()
    post = RawUpload(
        pytusd.port,
        "POST",
        "/files/",
        {**TUS, "Upload-Length": str(size), "Content-Type": "application/offset+octet-stream",
         "Content-Length": str(size)},
    )
    for _ in range(size // len(chunk)):
        post.send(chunk)
    status, headers, _ = post.response()
    assert status == 201 and int(headers["upload-offset"]) == size
    assert (pytusd.rss_peak_kib() - baseline) / 1024 < 48


# -- the command line -----------------------------------------------------------------------------------------------

FLAGS = (
    "--host --port --unix-sock --base-path --upload-dir --max-size --behind-proxy --disable-download "
    "--disable-termination --disable-cors --cors-allow-origin --cors-allow-credentials --cors-allow-methods "
    "--cors-allow-headers --cors-expose-headers --cors-max-age --network-timeout --shutdown-timeout "
    "--acquire-lock-timeout --dir-perms --file-perms --tls-certificate --tls-key --verbose --log-format --version "
    "--request-completion-timeout --enable-h2c --show-startup-logs --hooks-grpc-forward-headers "
    "--s3-transfer-acceleration --s3-log-api-calls"
).split()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytusd", *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_help_documents_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout, flag
    assert "PYTUSD_UPLOAD_DIR" in result.stdout


def test_version():
    from pytusd import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"pytusd {__version__}"


def test_bad_flag_values_are_clear_errors():
    result = run_cli("--network-timeout", "soon")
    assert result.returncode == 2 and "invalid duration" in result.stderr
    result = run_cli("--log-format", "xml")
    assert result.returncode == 2 and "text or json" in result.stderr


def test_defaults_like_tusd_and_startup_line(tmp_path):
    """No flags: 0.0.0.0:8080, /files/, ./data (run in a temp cwd; skipped if 8080 is taken)."""
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", 8080))
        except OSError:
            if os.environ.get("CI") == "true":
                pytest.fail("port 8080 is taken: CI must be able to test pytusd's defaults")
            pytest.skip("port 8080 is in use on this machine")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        line = proc.stdout.readline()
        assert "http://0.0.0.0:8080/files/" in line
        r = httpx.post("http://127.0.0.1:8080/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status_code == 201
        assert (tmp_path / "data" / (r.headers["location"].rsplit("/", 1)[1] + ".info")).exists()
        assert "tus" in httpx.get("http://127.0.0.1:8080/").text
    finally:
        proc.terminate()
        proc.wait(10)


def test_environment_and_go_style_flags(pytusd_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTUSD_BASE_PATH", "/uploads/")
    monkeypatch.setenv("PYTUSD_MAX_SIZE", "10")
    server = pytusd_factory("-disable-download", "-verbose=false")
    base = f"http://127.0.0.1:{server.port}/uploads/"
    r = httpx.options(base)
    assert r.headers["tus-max-size"] == "10"
    url = create(base, 5)
    assert url.startswith(base)
    assert httpx.get(url).status_code == 405
    assert "POST /uploads/" not in server.log()  # -verbose=false: no request lines


def test_perms_flags(pytusd_factory):
    server = pytusd_factory("--file-perms", "0600", "--dir-perms", "0700")
    url = create(server.url, 1)
    upload_id = url.rsplit("/", 1)[1]
    assert (server.upload_dir / upload_id).stat().st_mode & 0o777 == 0o600
    assert (server.upload_dir / f"{upload_id}.info").stat().st_mode & 0o777 == 0o600


def test_json_logs(pytusd_factory):
    import json

    server = pytusd_factory("--log-format", "json")
    create(server.url, 1)
    deadline = time.monotonic() + 5  # the access line is written just after the response went out
    while "POST /files/ -> 201" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any("POST /files/ -> 201" in entry["msg"] for entry in lines)
    assert all({"time", "level", "msg"} <= entry.keys() for entry in lines)


def test_unix_socket(tmp_path):
    sock_path = tmp_path / "tus.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--unix-sock", str(sock_path), "--upload-dir", str(tmp_path / "d")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        transport = httpx.HTTPTransport(uds=str(sock_path))
        with httpx.Client(transport=transport, base_url="http://tus.local") as client:
            r = client.post("/files/", headers={**TUS, "Upload-Length": "3"})
            assert r.status_code == 201 and r.headers["location"].startswith("http://tus.local/files/")
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls(tmp_path, tls_cert):
    cert, key = tls_cert
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--host", "127.0.0.1", "--port", str(port), "--upload-dir",
         str(tmp_path / "d"), "--tls-certificate", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                r = httpx.post(f"https://127.0.0.1:{port}/files/", headers={**TUS, "Upload-Length": "1"}, verify=False)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 201 and r.headers["location"].startswith(f"https://127.0.0.1:{port}/files/")
    finally:
        proc.terminate()
        proc.wait(10)


def test_expect_100_continue(pytusd):
    url = create(pytusd.url, 5)
    path = "/files/" + url.rsplit("/", 1)[1]
    request = RawUpload(pytusd.port, "PATCH", path, {**tus_patch_headers(0, 5), "Expect": "100-continue"})
    status, _, _ = request.response()
    assert status == 100
    request.send(b"hello")
    status, headers, _ = request.response()
    assert status == 204 and headers["upload-offset"] == "5"
    request.close()


def test_rejected_request_does_not_ask_for_the_body(pytusd):
    url = create(pytusd.url, 5)
    path = "/files/" + url.rsplit("/", 1)[1]
    request = RawUpload(pytusd.port, "PATCH", path, {**tus_patch_headers(3, 2), "Expect": "100-continue"})
    status, headers, body = request.response()
    assert status == 409 and body.startswith(b"ERR_MISMATCHED_OFFSET")
    assert headers["connection"] == "close"
    request.close()


def test_client_disconnect_keeps_every_byte_that_arrived(pytusd):
    url = create(pytusd.url, 1_000_000)
    upload_id = url.rsplit("/", 1)[1]
    data = os.urandom(300_001)
    request = RawUpload(pytusd.port, "PATCH", f"/files/{upload_id}", tus_patch_headers(0, 1_000_000))
    request.send(data)
    wait_for_offset(str(pytusd.upload_dir / upload_id), len(data))
    request.close()
    time.sleep(0.2)
    assert offset_of(url) == len(data)
    assert (pytusd.upload_dir / upload_id).read_bytes() == data


def test_checksummed_chunk_cut_off_by_a_disconnect_is_discarded(pytusd):
    import base64

    data = os.urandom(200_000)
    url = create(pytusd.url, len(data))
    upload_id = url.rsplit("/", 1)[1]
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    request = RawUpload(
        pytusd.port,
        "PATCH",
        f"/files/{upload_id}",
        {**tus_patch_headers(0, len(data)), "Upload-Checksum": f"sha1 {digest}"},
    )
    request.send(data[:120_000])
    wait_for_offset(str(pytusd.upload_dir / upload_id), 120_000)
    request.close()
    time.sleep(0.3)
    assert offset_of(url) == 0
    assert (pytusd.upload_dir / upload_id).stat().st_size == 0
    r = httpx.patch(
        url,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                 "Upload-Checksum": f"sha1 {digest}"},
        content=data,
    )
    assert r.status_code == 204 and (pytusd.upload_dir / upload_id).read_bytes() == data


def test_expiration_end_to_end_and_cleanup_command(pytusd_factory, tmp_path):
    server = pytusd_factory("--expiration", "1s", "--expiration-cleanup-interval", "200ms")
    url = create(server.url, 10)
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": "10"})
    assert "upload-expires" in r.headers
    upload_id = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 10
    while (server.upload_dir / upload_id).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (server.upload_dir / upload_id).exists()  # the server's cleaner removed it
    assert httpx.head(url, headers=TUS).status_code == 410
    assert "cleaner removed expired upload" in server.log()

    # `pytusd cleanup` does one pass from the command line (for cron).
    folder = tmp_path / "cron"
    other = pytusd_factory(upload_dir=folder)
    stale = create(other.url, 10).rsplit("/", 1)[1]
    other.stop()
    past = time.time() - 7200
    for name in (stale, f"{stale}.info"):
        os.utime(folder / name, (past, past))
    result = run_cli("cleanup", "--upload-dir", str(folder), "--expiration", "1h")
    assert result.returncode == 0 and "removed 1 expired upload" in result.stdout
    assert not (folder / stale).exists()
    assert run_cli("cleanup", "--upload-dir", str(folder)).returncode == 2  # no --expiration: refuses


def _chunked_patch_with_trailer(server, path: str, offset: int, data: bytes, trailer: str | None):
    request = RawUpload(
        server.port,
        "PATCH",
        path,
        {"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
         "Transfer-Encoding": "chunked", "Trailer": "Upload-Checksum"},
    )
    half = len(data) // 2
    for part in (data[:half], data[half:]):
        request.send(b"%x\r\n" % len(part) + part + b"\r\n")
    request.send(b"0\r\n" + (f"Upload-Checksum: {trailer}\r\n".encode() if trailer else b"") + b"\r\n")
    response = request.response()
    request.close()
    return response


def test_checksum_trailer(pytusd):
    import base64

    assert "checksum-trailer" in httpx.options(pytusd.url).headers["tus-extension"].split(",")
    data = os.urandom(300_000)
    url = create(pytusd.url, 2 * len(data))
    upload_id = url.rsplit("/", 1)[1]
    path = f"/files/{upload_id}"
    good = "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()
    bad = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()

    status, headers, _ = _chunked_patch_with_trailer(pytusd, path, 0, data, good)
    assert status == 204 and headers["upload-offset"] == str(len(data))

    status, _, body = _chunked_patch_with_trailer(pytusd, path, len(data), data, bad)
    assert status == 460 and body.startswith(b"ERR_CHECKSUM_MISMATCH")
    assert offset_of(url) == len(data)  # the mismatched chunk left nothing behind

    status, _, body = _chunked_patch_with_trailer(pytusd, path, len(data), data, None)
    assert status == 400 and body.startswith(b"ERR_INVALID_CHECKSUM")
    assert offset_of(url) == len(data)

    # The client sends the chunk again after the 460, and the upload ends byte-exact.
    status, headers, _ = _chunked_patch_with_trailer(pytusd, path, len(data), data, good)
    assert status == 204 and headers["upload-offset"] == str(2 * len(data))
    assert (pytusd.upload_dir / upload_id).read_bytes() == data + data


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8])
def test_ietf_draft_upload_interrupted_and_resumed(pytusd_factory, version):
    server = pytusd_factory("--enable-experimental-protocol")
    data = os.urandom(2_000_000)
    incomplete = {"Upload-Incomplete": "?1"} if version == 3 else {"Upload-Complete": "?0"}
    complete = {"Upload-Incomplete": "?0"} if version == 3 else {"Upload-Complete": "?1"}
    # Creation carrying the first part, then the connection drops mid-body.
    creation = RawUpload(
        server.port, "POST", "/files/",
        {"Upload-Draft-Interop-Version": str(version), **incomplete, "Content-Length": str(len(data))},
    )
    creation.send(data[:700_000])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(p.suffix == "" for p in server.upload_dir.glob("*")):
        time.sleep(0.02)
    [data_file] = [p for p in server.upload_dir.iterdir() if p.suffix == ""]
    wait_for_offset(str(data_file), 700_000)
    creation.close()
    time.sleep(0.2)
    url = server.url + data_file.name
    head = httpx.head(url, headers={"Upload-Draft-Interop-Version": str(version)})
    assert head.status_code == 204
    offset = int(head.headers["upload-offset"])
    assert offset == 700_000
    append_type = {"Content-Type": "application/partial-upload"} if version >= 6 else {}
    r = httpx.patch(
        url,
        headers={"Upload-Draft-Interop-Version": str(version), **complete, **append_type, "Upload-Offset": str(offset)},
        content=data[offset:],
    )
    assert r.status_code == 204, r.text
    assert data_file.read_bytes() == data


def test_file_hooks_through_the_command(pytusd_factory, tmp_path):
    """Seed 002: a pre-finish script that exits 0 and prints RejectUpload with a 403 reaches the client."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    pre_finish = hooks / "pre-finish"
    pre_finish.write_text(
        "#!/bin/sh\ncat > /dev/null\n"
        'echo \'{"RejectUpload": true, "HTTPResponse": {"StatusCode": 403, "Body": "file is not allowed"}}\'\n'
    )
    pre_finish.chmod(0o755)
    server = pytusd_factory("--hooks-dir", str(hooks), "--hooks-enabled-events", "pre-create,pre-finish")
    url = create(server.url, 3)
    r = httpx.patch(
        url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}, content=b"abc"
    )
    assert r.status_code == 403 and r.text == "file is not allowed"


def test_upload_rules_from_flags_and_file(pytusd_factory, tmp_path):
    import base64
    import json

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"max_size": 50, "allowed_types": ["text/*"]}))
    server = pytusd_factory("--upload-rules", str(rules), "--required-metadata", "filename")

    def post(length: int, **meta: str):
        header = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
        return httpx.post(server.url, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": header})

    assert post(10, filename="a.txt", filetype="text/plain").status_code == 201
    assert post(60, filename="a.txt", filetype="text/plain").status_code == 413
    r = post(10, filetype="text/plain")
    assert r.status_code == 400 and "required_metadata" in r.text
    r = post(10, filename="a.txt", filetype="image/png")
    assert r.status_code == 400 and "allowed_types" in r.text


def test_upload_profiles_from_the_example_file(pytusd_factory):
    """examples/upload-profiles.json through the command: the client's field, the default, an unknown name."""
    import base64

    example = Path(__file__).resolve().parents[2] / "examples" / "upload-profiles.json"
    server = pytusd_factory("--upload-rules", str(example))

    def post(length: int, **meta: str):
        header = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
        return httpx.post(server.url, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": header})

    assert post(10, profile="avatars", filename="me.png", filetype="image/png").status_code == 201
    r = post(3 << 20, profile="avatars", filename="me.png", filetype="image/png")
    assert r.status_code == 413 and "max_size" in r.text
    assert post(10, filename="cv.pdf", filetype="application/pdf", owner="ann").status_code == 201  # documents
    r = post(10, filename="cv.pdf", filetype="application/pdf")
    assert r.status_code == 400 and "required_metadata" in r.text
    r = post(10, profile="music", filename="a.mp3")
    assert r.status_code == 400 and r.text.startswith("ERR_UNKNOWN_UPLOAD_PROFILE")
    done = subprocess.run([sys.executable, "-m", "pytusd", "--upload-rules", str(example), "--allowed-types", "x/*",
                           "--port", "0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "cannot apply to upload profiles" in done.stderr
