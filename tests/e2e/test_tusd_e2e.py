"""tusd's black-box end-to-end suite, replayed against the ``pytusd`` command.

tusd checks its binary in ``internal/e2e/e2e_test.go`` and ``internal/e2e/e2e_unix_test.go`` (tusd commit
ad7fb31344e0629cb8a5af67bb1e630f90507890). Each test here starts ``python -m pytusd`` exactly as that suite starts
tusd: ``-port=0`` plus the very flags the Go test passes (single-dash Go style), nothing else, in a fresh working
directory so tusd's default upload directory ``./data`` is the test's own. The scenarios, sizes, rates, flag values and
tolerances are tusd's; the code is written anew.

=============================================  ==========================================================
this module                                    tusd test it ports
=============================================  ==========================================================
test_startup_line_names_the_upload_url         spawnTusd's wait for "You can now upload files to: <url>"
test_successful_upload                         TestSuccessfulUpload
test_network_read_timeout                      TestNetworkReadTimeout
test_unexpected_network_close                  TestUnexpectedNetworkClose
test_unexpected_network_reset                  TestUnexpectedNetworkReset
test_lock_release                              TestLockRelease
test_upload_length_exceeded                    TestUploadLengthExceeded
test_stop_upload                               TestStopUpload
test_shutdown                                  TestShutdown (e2e_unix_test.go)
=============================================  ==========================================================

None of tusd's tests has subtests. Where tusd puts toxiproxy between client and server, :class:`ThrottlingProxy` (a
real TCP proxy in a thread) does the same job: client-to-server bytes at 5 KB/s, optionally cut after 10,000 bytes.
tusd's suite waits for tusd's startup line; pytusd does not print it (yet), so the servers here count as ready once
they accept connections on their port (see ``TusdStyleProcess`` in conftest.py), and the line itself is checked by
``test_startup_line_names_the_upload_url`` alone. Beyond tusd's own assertions the tests also look at the bytes on
disk (``<upload-dir>/<id>``) and at the hook requests the hook server received, where tusd's scenario decides them.

When written, all nine also passed with the command swapped for a tusd v2.9.1 binary (same flags, same checks), so
a failure here is a difference from tusd, not a quirk of the port.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.unit.hooks.test_http import HookServer
from .conftest import TUSD_STARTUP_LINE, RawUpload, ThrottlingProxy, listening_tcp_ports

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}


def is_approx(got: float, expected: float, tolerance: float) -> bool:
    """tusd's isApprox: ``got`` within ``expected * (1 -/+ tolerance)``."""
    return expected * (1 - tolerance) <= got <= expected * (1 + tolerance)


def request(url: str, method: str, headers: dict[str, str], body: bytes | None = None,
            timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own (status, lower-case headers, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path, body=body, headers=headers)
        res = conn.getresponse()
        data = res.read()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, data
    finally:
        conn.close()


def create_upload(endpoint: str, length: int) -> str:
    status, headers, body = request(endpoint, "POST", {**TUS, "Upload-Length": str(length)})
    assert status == 201, (status, body)
    return headers["location"]


def head_upload(url: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = request(url, "HEAD", TUS)
    return status, headers


def stored_bytes(server, upload_url: str) -> bytes:
    return (server.upload_dir / upload_url.rstrip("/").rsplit("/", 1)[1]).read_bytes()


def chunked(data: bytes, size: int = 32 * 1024) -> list[bytes]:
    """``data`` framed as HTTP/1.1 chunks of ``size`` bytes (without the last, empty chunk)."""
    return [b"%x\r\n" % len(data[i:i + size]) + data[i:i + size] + b"\r\n" for i in range(0, len(data), size)]


def start_sending(upload: RawUpload, parts: list[bytes]) -> threading.Thread:
    """Send ``parts`` on ``upload`` in a thread while the test waits for the response (as Go's client does); a server
    that answers early and closes the connection just ends the sending."""

    def run() -> None:
        with contextlib.suppress(OSError):
            for part in parts:
                upload.send(part)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def proxy_port(proxy: ThrottlingProxy) -> int:
    return int(proxy.listen.rsplit(":", 1)[1])


# -- spawnTusd ------------------------------------------------------------------------------------------------------


def test_startup_line_names_the_upload_url(pytusd_factory):
    """spawnTusd: tusd prints "You can now upload files to: <url>" on stdout, naming the address it listens on."""
    server = pytusd_factory(tusd_style=True)
    ports = listening_tcp_ports(server.proc.pid)
    assert ports, server.log()
    line = TUSD_STARTUP_LINE.search(server.stdout())
    assert line is not None, f"tusd's startup line is missing from stdout:\n{server.log()}"
    url, address = line.group(1), line.group(2)
    assert urlsplit(url).path == "/files/", url
    assert int(address.rsplit(":", 1)[1]) in ports, (address, ports)


# -- TestSuccessfulUpload -------------------------------------------------------------------------------------------


def test_successful_upload(pytusd_factory):
    server = pytusd_factory(tusd_style=True)
    data = b"hello world"

    status, headers, _ = request(server.url, "POST", {**TUS, "Upload-Length": str(len(data))})
    assert status == 201
    upload_url = headers["location"]

    status, headers, body = request(upload_url, "PATCH", PATCH_HEADERS, data)
    assert status == 204, (status, body)
    assert headers.get("upload-offset") == str(len(data))
    assert stored_bytes(server, upload_url) == data


# -- TestNetworkReadTimeout -----------------------------------------------------------------------------------------


def test_network_read_timeout(pytusd_factory, toxiproxy):
    """No data for -network-timeout: the PATCH ends with 500 ERR_READ_TIMEOUT, and what came before is kept."""
    server = pytusd_factory("-network-timeout=5s", tusd_style=True)
    proxy = toxiproxy(server.address, rate=5)
    endpoint = f"http://{proxy.listen}/files/"

    payload = os.urandom(10 * 1024)
    upload_url = create_upload(endpoint, 50 * 1024)

    # A body of unknown length (chunked) that stops after 10 KB without ending: the connection stays open.
    start = time.monotonic()
    patch = RawUpload(proxy_port(proxy), "PATCH", urlsplit(upload_url).path,
                      {**PATCH_HEADERS, "Transfer-Encoding": "chunked"})
    try:
        start_sending(patch, chunked(payload))
        status, _, body = patch.response(timeout=20)
    finally:
        patch.close()
    duration = time.monotonic() - start

    assert status == 500, (status, body)
    assert b"ERR_READ_TIMEOUT" in body, body

    status, headers = head_upload(upload_url)
    assert status == 200
    offset = int(headers["upload-offset"])
    # 10 KB at 5 KB/s take 2 s; then 5 s of silence.
    assert is_approx(offset, 10_000, 0.1), offset
    assert is_approx(duration, 7.0, 0.2), duration
    assert stored_bytes(server, upload_url) == payload[:offset]


# -- TestUnexpectedNetworkClose -------------------------------------------------------------------------------------


def test_unexpected_network_close(pytusd_factory, toxiproxy):
    """The connection dies mid-body (the proxy cuts it after 10,000 bytes): what arrived is kept."""
    server = pytusd_factory(tusd_style=True)
    proxy = toxiproxy(server.address, rate=5, limit=10_000)
    endpoint = f"http://{proxy.listen}/files/"

    length = 50 * 1024
    data = os.urandom(length)
    upload_url = create_upload(endpoint, length)

    start = time.monotonic()
    patch = RawUpload(proxy_port(proxy), "PATCH", urlsplit(upload_url).path,
                      {**PATCH_HEADERS, "Content-Length": str(length)})
    try:
        start_sending(patch, [data])
        # tusd's client sees EOF or "connection reset", never a response.
        with pytest.raises(ConnectionError):
            patch.response(timeout=20)
    finally:
        patch.close()
    duration = time.monotonic() - start

    status, headers = head_upload(upload_url)
    assert status == 200
    offset = int(headers["upload-offset"])
    assert is_approx(offset, 10_000, 0.1), offset
    assert is_approx(duration, 2.0, 0.2), duration
    assert stored_bytes(server, upload_url) == data[:offset]


# -- TestUnexpectedNetworkReset -------------------------------------------------------------------------------------


def test_unexpected_network_reset(pytusd_factory):
    """A PATCH written by hand, as tusd's test does (a Go raw string: bare LF line ends), promising 10 KB, carrying
    5 KB, then ended with a TCP RST: the 5 KB are kept."""
    server = pytusd_factory(tusd_style=True)
    upload_length, payload_length = 10 * 1024, 5 * 1024
    data = os.urandom(payload_length)
    upload_url = create_upload(server.url, upload_length)
    parts = urlsplit(upload_url)

    host, _, port = server.address.rpartition(":")
    conn = socket.create_connection((host.strip("[]"), int(port)))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST, not FIN
    head = (
        f"PATCH {parts.path} HTTP/1.1\n"
        f"Host: {parts.netloc}\n"
        f"Content-Length: {upload_length}\n"
        "Content-Type: application/offset+octet-stream\n"
        "Tus-Resumable: 1.0.0\n"
        "Upload-Offset: 0\n"
        "\n"
    )
    conn.sendall(head.encode())
    conn.sendall(data)
    time.sleep(0.1)  # tusd's scenario: the 5 KB get 100 ms on their way before the reset
    conn.close()

    # tusd looks after another 100 ms; here: the first HEAD that shows the 5 KB, or the last within 2 s.
    deadline = time.monotonic() + 2
    while True:
        status, headers = head_upload(upload_url)
        offset = int(headers.get("upload-offset", "-1"))
        if (status == 200 and is_approx(offset, payload_length, 0.1)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200
    assert is_approx(offset, payload_length, 0.1), f"offset {offset} after 5 KB and a RST\n{server.log()}"
    assert stored_bytes(server, upload_url) == data[:offset]


# -- TestLockRelease ------------------------------------------------------------------------------------------------


def test_lock_release(pytusd_factory, toxiproxy):
    """A HEAD for an upload whose PATCH is still running makes that PATCH end quickly (400 ERR_UPLOAD_INTERRUPTED)
    and is answered with the offset reached."""
    server = pytusd_factory("-filelock-holder-poll-interval=1s", "-filelock-acquirer-poll-interval=1s",
                            tusd_style=True)
    proxy = toxiproxy(server.address, rate=5)
    endpoint = f"http://{proxy.listen}/files/"

    length = 50 * 1024
    data = os.urandom(length)
    upload_url = create_upload(endpoint, length)

    head_result: list[tuple[int, dict[str, str]] | BaseException] = []

    def resume_elsewhere() -> None:
        time.sleep(2)  # tusd's scenario: a second client turns up after 2 s
        try:
            head_result.append(head_upload(upload_url))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            head_result.append(exc)

    start = time.monotonic()
    patch = RawUpload(proxy_port(proxy), "PATCH", urlsplit(upload_url).path,
                      {**PATCH_HEADERS, "Content-Length": str(length)})
    head_thread = threading.Thread(target=resume_elsewhere, daemon=True)
    try:
        start_sending(patch, [data])
        head_thread.start()
        status, _, body = patch.response(timeout=20)
    finally:
        patch.close()
    duration = time.monotonic() - start

    assert status == 400, (status, body)
    assert b"ERR_UPLOAD_INTERRUPTED" in body, body

    head_thread.join(20)
    assert len(head_result) == 1 and not isinstance(head_result[0], BaseException), head_result
    head_status, head_headers = head_result[0]
    assert head_status == 200
    offset = int(head_headers["upload-offset"])
    # 2 s at 5 KB/s; the lock is handed over within the 1 s poll intervals.
    assert is_approx(offset, 10_000, 0.1), offset
    assert is_approx(duration, 2.5, 0.8), duration
    assert stored_bytes(server, upload_url) == data[:offset]


# -- TestUploadLengthExceeded ---------------------------------------------------------------------------------------


def test_upload_length_exceeded(pytusd_factory, toxiproxy):
    """A body of unknown length (chunked) that is longer than Upload-Length: exactly Upload-Length bytes are stored
    and the request is answered 413 ERR_UPLOAD_SIZE_EXCEEDED as soon as they are in, not after the whole body."""
    server = pytusd_factory(tusd_style=True)
    proxy = toxiproxy(server.address, rate=5)
    endpoint = f"http://{proxy.listen}/files/"

    upload_length, payload_length = 10 * 1024, 50 * 1024
    data = os.urandom(payload_length)
    upload_url = create_upload(endpoint, upload_length)

    start = time.monotonic()
    patch = RawUpload(proxy_port(proxy), "PATCH", urlsplit(upload_url).path,
                      {**PATCH_HEADERS, "Transfer-Encoding": "chunked"})
    try:
        start_sending(patch, [*chunked(data), b"0\r\n\r\n"])
        status, _, body = patch.response(timeout=20)
    finally:
        patch.close()
    duration = time.monotonic() - start

    assert status == 413, (status, body)
    assert b"ERR_UPLOAD_SIZE_EXCEEDED" in body, body

    status, headers = head_upload(upload_url)
    assert status == 200
    assert int(headers["upload-offset"]) == upload_length
    # 10 KB at 5 KB/s: 2 s.
    assert is_approx(duration, 2.0, 0.2), duration
    assert stored_bytes(server, upload_url) == data[:upload_length]


# -- TestStopUpload -------------------------------------------------------------------------------------------------


def test_stop_upload(pytusd_factory, toxiproxy):
    """An HTTP hook that answers every post-receive with StopUpload: the running PATCH ends with 400
    ERR_UPLOAD_STOPPED at the first progress hook (3 s) and the upload is gone."""
    hooks = HookServer(respond=lambda path, body: (200, {"StopUpload": True}))
    try:
        server = pytusd_factory("-hooks-http", hooks.url, "-hooks-enabled-events=post-receive",
                                "-progress-hooks-interval=3s", tusd_style=True)
        proxy = toxiproxy(server.address, rate=5)
        endpoint = f"http://{proxy.listen}/files/"

        upload_length = 50 * 1024
        data = os.urandom(upload_length)
        upload_url = create_upload(endpoint, upload_length)

        start = time.monotonic()
        patch = RawUpload(proxy_port(proxy), "PATCH", urlsplit(upload_url).path,
                          {**PATCH_HEADERS, "Content-Length": str(upload_length)})
        try:
            start_sending(patch, [data])
            status, _, body = patch.response(timeout=20)
        finally:
            patch.close()
        duration = time.monotonic() - start

        assert status == 400, (status, body)
        assert b"ERR_UPLOAD_STOPPED" in body, body

        status, _ = head_upload(upload_url)
        assert status == 404
        assert is_approx(duration, 3.0, 0.3), duration

        upload_id = upload_url.rstrip("/").rsplit("/", 1)[1]
        seen = [(body["Type"], body["Event"]["Upload"]["ID"]) for _, body in hooks.requests]
        assert seen and set(seen) == {("post-receive", upload_id)}, seen
        assert not (server.upload_dir / upload_id).exists()
        assert not (server.upload_dir / f"{upload_id}.info").exists()
    finally:
        hooks.close()


# -- TestShutdown (e2e_unix_test.go) --------------------------------------------------------------------------------


def test_shutdown(pytusd_factory, toxiproxy):
    """SIGINT while an upload streams in: that request is answered 503 ERR_SERVER_SHUTDOWN right away and the
    process then exits by itself with status 0, about 2 s after the request began."""
    server = pytusd_factory(tusd_style=True)
    proxy = toxiproxy(server.address, rate=5)
    endpoint = f"http://{proxy.listen}/files/"

    length = 50 * 1024
    data = os.urandom(length)

    # Creation with upload: the data rides on the POST.
    interrupt = threading.Timer(2, server.signal, args=(signal.SIGINT,))
    start = time.monotonic()
    post = RawUpload(proxy_port(proxy), "POST", urlsplit(endpoint).path, {
        **TUS, "Upload-Length": str(length), "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(length),
    })
    try:
        start_sending(post, [data])
        interrupt.start()
        status, headers, body = post.response(timeout=20)
    finally:
        post.close()
        interrupt.cancel()

    assert status == 503, (status, body)
    assert b"ERR_SERVER_SHUTDOWN" in body, body

    returncode = server.wait(timeout=20)
    duration = time.monotonic() - start
    assert returncode == 0, f"exit status {returncode}\n{server.log()}"
    assert is_approx(duration, 2.0, 0.1), duration

    # What had arrived is stored (beyond tusd's assertions).
    infos = sorted(Path(server.upload_dir).glob("*.info"))
    assert len(infos) == 1, infos
    stored = (server.upload_dir / infos[0].name[: -len(".info")]).read_bytes()
    assert 0 < len(stored) < length and stored == data[: len(stored)]
