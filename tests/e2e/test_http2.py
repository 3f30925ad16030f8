"""HTTP/2 on the ``pytusd`` command: over TLS when ALPN picks it (offered by default, as tusd's Go server does), and
cleartext h2c with prior knowledge under tusd's ``-enable-h2c``. Real clients: httpx (``http2=True``), curl
(``--http2``, ``--http2-prior-knowledge``), h2load (nghttp2) for load, and a frame-level client on the ``h2``
library (tests/e2e/h2client.py) for flow control, trailers and interim responses."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time

import httpx
import pytest

from .conftest import tus_patch_headers
from .h2client import H2Client

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required in CI (scripts/test installs it)")
        pytest.skip(f"{tool} missing: run scripts/test")
    return path


def upload_resume_download(client: httpx.Client, base: str) -> None:
    """Create, send half, ask the offset, send the rest, download: every answer over HTTP/2."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    r = client.post(base, headers={**TUS, "Upload-Length": str(len(data))})
    assert r.status_code == 201 and r.http_version == "HTTP/2", (r.status_code, r.http_version)
    url = r.headers["location"]
    assert url.startswith(base)
    half = len(data) // 2
    r = client.patch(url, headers=tus_patch_headers(0, half), content=data[:half])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(half) and r.http_version == "HTTP/2"
    r = client.head(url, headers=TUS)
    assert r.status_code == 200 and r.headers["upload-offset"] == str(half)
    r = client.patch(url, headers=tus_patch_headers(half, len(data) - half), content=data[half:])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    r = client.get(url)
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    r = client.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]


def test_h2c_with_prior_knowledge(pytusd_factory):
    server = pytusd_factory("-enable-h2c")
    with httpx.Client(http1=False, http2=True, timeout=30) as client:
        upload_resume_download(client, server.url)
    with httpx.Client(timeout=30) as client:  # HTTP/1.1 on the same port still
        r = client.post(server.url, headers={**TUS, "Upload-Length": "1"})
        assert r.status_code == 201 and r.http_version == "HTTP/1.1"


def test_h2c_is_off_by_default(pytusd):
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        with pytest.raises(httpx.HTTPError):
            client.post(pytusd.url, headers={**TUS, "Upload-Length": "1"})
    r = httpx.post(pytusd.url, headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 201


def test_h2_over_tls_by_alpn(pytusd_factory, tls_cert):
    cert, key = tls_cert
    server = pytusd_factory("--tls-certificate", str(cert), "--tls-key", str(key))
    base = f"https://127.0.0.1:{server.port}/files/"
    with httpx.Client(http2=True, verify=False, timeout=30) as client:
        upload_resume_download(client, base)
    with httpx.Client(verify=False, timeout=30) as client:  # a client that offers only HTTP/1.1 gets it
        r = client.post(base, headers={**TUS, "Upload-Length": "1"})
        assert r.status_code == 201 and r.http_version == "HTTP/1.1"


@pytest.mark.parametrize("mode", ["tls", "h2c"])
def test_curl_uploads_and_downloads_over_http2(pytusd_factory, tls_cert, tmp_path, mode):
    curl = require("curl")
    cert, key = tls_cert
    if mode == "tls":
        server = pytusd_factory("--tls-certificate", str(cert), "--tls-key", str(key))
        base, flags = f"https://127.0.0.1:{server.port}/files/", ["--http2", "-k"]
    else:
        server = pytusd_factory("-enable-h2c")
        base, flags = server.url, ["--http2-prior-knowledge"]
    data = os.urandom(1024 * 1024 + 3)
    source = tmp_path / "source.bin"
    source.write_bytes(data)

    def run(*args: str) -> list[str]:
        done = subprocess.run([curl, "-sS", *flags, "-w", "\\n%{http_version} %{http_code}", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.rsplit("\n", 1)

    head, last = run("-D", "-", "-o", "/dev/null", "-X", "POST", "-H", "Tus-Resumable: 1.0.0",
                     "-H", f"Upload-Length: {len(data)}", base)
    assert last == "2 201", last
    location = next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("location:"))
    _, last = run("-o", "/dev/null", "-X", "PATCH", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
                  "-H", "Content-Type: application/offset+octet-stream", "--data-binary", f"@{source}", location)
    assert last == "2 204", last
    target = tmp_path / "downloaded.bin"
    _, last = run("-o", str(target), location)
    assert last == "2 200" and target.read_bytes() == data


def test_h2load_creates_uploads_on_many_streams(pytusd_factory, tmp_path):
    """300 creations with upload (10 bytes each), 20 streams at a time on each of 3 connections."""
    h2load = require("h2load")
    server = pytusd_factory("-enable-h2c")
    body = tmp_path / "body.bin"
    body.write_bytes(b"0123456789")
    done = subprocess.run(
        [h2load, "-n", "300", "-c", "3", "-m", "20", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Length: 10",
         "-H", "Content-Type: application/offset+octet-stream", "-d", str(body), server.url],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # h2load's summary: "requests: 300 total, 300 started, 300 done, 300 succeeded, 0 failed, ..." and the statuses
    assert "300 succeeded, 0 failed" in done.stdout, done.stdout
    assert "status codes: 300 2xx" in done.stdout, done.stdout
    infos = list(server.upload_dir.glob("*.info"))
    assert len(infos) == 300
    assert all(info.with_suffix("").read_bytes() == b"0123456789" for info in infos)


def test_a_stalled_stream_holds_up_no_other_stream(pytusd_factory):
    """Stream 1 sends part of a body and goes silent; stream 3 on the same connection uploads 4 MiB (many times a
    stream's window) and is answered while stream 1 still waits."""
    server = pytusd_factory("-enable-h2c", "--network-timeout", "30s")
    stalled = httpx.post(server.url, headers={**TUS, "Upload-Length": "10000000"}).headers["location"]
    other = httpx.post(server.url, headers={**TUS, "Upload-Length": str(4 << 20)}).headers["location"]
    client = H2Client(server.port)
    try:
        one = client.request("PATCH", httpx.URL(stalled).path, tus_patch_headers(0, 10_000_000), end=False)
        client.send(one, os.urandom(100_000))
        data = os.urandom(4 << 20)
        three = client.request("PATCH", httpx.URL(other).path, tus_patch_headers(0, len(data)), end=False)
        client.send(three, data, end=True)
        answer = client.wait(three)
        assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
        assert not client.answers[one].status  # still open
        deadline = time.monotonic() + 10
        while (server.upload_dir / httpx.URL(stalled).path.rsplit("/", 1)[1]).stat().st_size < 100_000:
            assert time.monotonic() < deadline, "the stalled stream's bytes were not stored"
            time.sleep(0.05)
    finally:
        client.close()
    assert (server.upload_dir / httpx.URL(other).path.rsplit("/", 1)[1]).read_bytes() == data


@pytest.mark.parametrize("good", [True, False])
def test_checksum_trailer_over_http2(pytusd_factory, good):
    server = pytusd_factory("-enable-h2c")
    data = os.urandom(200_000)
    url = httpx.post(server.url, headers={**TUS, "Upload-Length": str(len(data))}).headers["location"]
    digest = hashlib.sha1(data if good else data + b"x").digest()
    client = H2Client(server.port)
    try:
        stream = client.request("PATCH", httpx.URL(url).path,
                                {**tus_patch_headers(0, len(data)), "Trailer": "Upload-Checksum"}, end=False)
        client.send(stream, data)
        client.trailers(stream, {"Upload-Checksum": "sha1 " + base64.b64encode(digest).decode()})
        answer = client.wait(stream)
    finally:
        client.close()
    if good:
        assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
    else:
        assert answer.status == 460 and answer.body.startswith(b"ERR_CHECKSUM_MISMATCH")
        assert httpx.head(url, headers=TUS).headers["upload-offset"] == "0"


def test_104_before_the_body_over_http2(pytusd_factory):
    server = pytusd_factory("-enable-h2c", "--enable-experimental-protocol")
    client = H2Client(server.port)
    try:
        stream = client.request("POST", "/files/", {"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1",
                                                    "Content-Length": "10"}, end=False)
        while not client.answers[stream].interim:  # before a byte of the body is sent
            client.pump()
        status, headers = client.answers[stream].interim[0]
        assert status == 104 and headers["upload-draft-interop-version"] == "6"
        location = headers["location"]
        assert "upload-limit" in headers
        client.send(stream, b"0123456789", end=True)
        answer = client.wait(stream)
    finally:
        client.close()
    assert answer.status == 201 and answer.headers["location"] == location
    assert (server.upload_dir / location.rsplit("/", 1)[1]).read_bytes() == b"0123456789"


def test_100_continue_over_http2(pytusd_factory):
    server = pytusd_factory("-enable-h2c")
    url = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"}).headers["location"]
    client = H2Client(server.port)
    try:
        stream = client.request("PATCH", httpx.URL(url).path, {**tus_patch_headers(0, 5), "Expect": "100-continue"},
                                end=False)
        while not client.answers[stream].interim:  # the body waits for it
            client.pump()
        assert client.answers[stream].interim[0][0] == 100
        client.send(stream, b"hello", end=True)
        answer = client.wait(stream)
    finally:
        client.close()
    assert answer.status == 204 and answer.headers["upload-offset"] == "5"
