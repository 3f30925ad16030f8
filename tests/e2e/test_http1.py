"""The ``pytusd`` command's own HTTP/1.1 server (pytusd.server.h1) where it must behave as Go's net/http, which
tusd serves with: line endings, interim responses, signals and exit status, keep-alive, pipelining, early answers."""

from __future__ import annotations

import os
import signal
import socket
import time

import httpx
import pytest

from .conftest import tus_patch_headers

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


def read_response(
    sock: socket.socket, buf: bytes = b"", head: bool = False
) -> tuple[int, dict[str, str], bytes, bytes]:
    """One response off ``sock`` (body by Content-Length; none after a ``head`` request): status, headers, body,
    and the bytes after it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    length = int(headers.get("content-length", "0")) if int(status_line.split()[1]) >= 200 and not head else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length], rest[length:]


def create(url: str, length: int) -> str:
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length)})
    assert r.status_code == 201, r.text
    return httpx.URL(r.headers["location"]).path


def test_bare_lf_line_endings_are_accepted_as_go_does(pytusd):
    path = create(pytusd.url, 5)
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\nHost: x\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
                     "Content-Type: application/offset+octet-stream\nContent-Length: 5\n\nhello".encode())
        status, headers, _, _ = read_response(sock)
    assert status == 204 and headers["upload-offset"] == "5"
    # mixed endings, and a blank line made of CRLF after bare-LF fields
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\nTus-Resumable: 1.0.0\n\r\n".encode())
        status, headers, _, _ = read_response(sock, head=True)
    assert status == 200 and headers["upload-offset"] == "5"


def test_bare_lf_in_chunked_framing_is_refused_as_go_does(pytusd):
    path = create(pytusd.url, 5)
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                     "Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\nhello\n0\n\n".encode())
        status, _, _, _ = read_response(sock)
    assert status == 400


def test_a_lone_cr_in_a_header_is_refused(pytusd):
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n")
        status, _, _, _ = read_response(sock)
    assert status == 400


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8])
def test_104_announces_the_upload_before_its_body(pytusd_factory, version):
    server = pytusd_factory("--enable-experimental-protocol")
    complete = "Upload-Incomplete: ?0" if version == 3 else "Upload-Complete: ?1"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /files/ HTTP/1.1\r\nHost: x\r\nUpload-Draft-Interop-Version: {version}\r\n{complete}\r\n"
                     "Content-Length: 10\r\n\r\n".encode())
        status, interim, _, rest = read_response(sock)  # nothing of the body was sent yet
        assert status == 104
        assert interim["upload-draft-interop-version"] == str(version) and interim["upload-limit"]
        location = interim["location"]
        sock.sendall(b"0123456789")
        status, headers, _, _ = read_response(sock, rest)
    assert status == 201 and headers["location"] == location
    assert (server.upload_dir / location.rsplit("/", 1)[1]).read_bytes() == b"0123456789"


def test_an_interrupted_first_request_resumes_at_the_announced_url(pytusd_factory):
    """What the 104 is for: the client loses the connection mid-body and resumes where the 104 said."""
    server = pytusd_factory("--enable-experimental-protocol")
    data = os.urandom(500_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpload-Draft-Interop-Version: 6\r\n"
                     f"Upload-Complete: ?1\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        status, interim, _, _ = read_response(sock)
        assert status == 104
        sock.sendall(data[:200_000])
        time.sleep(0.3)
    url = interim["location"]
    draft = {"Upload-Draft-Interop-Version": "6"}
    deadline = time.monotonic() + 10
    while (offset := int(httpx.head(url, headers=draft).headers["upload-offset"])) < 200_000:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert offset == 200_000
    r = httpx.patch(url, headers={**draft, "Upload-Offset": str(offset), "Upload-Complete": "?1",
                                  "Content-Type": "application/partial-upload"}, content=data[offset:])
    assert r.status_code == 204, r.text
    assert (server.upload_dir / url.rsplit("/", 1)[1]).read_bytes() == data


def test_no_104_for_tus_requests_or_http_1_0(pytusd_factory):
    server = pytusd_factory("--enable-experimental-protocol")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 3\r\n\r\n")
        assert read_response(sock)[0] == 201
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /files/ HTTP/1.0\r\nHost: x\r\nUpload-Draft-Interop-Version: 6\r\nUpload-Complete: ?1\r\n"
                     b"Content-Length: 2\r\n\r\nab")
        assert read_response(sock)[0] == 201  # HTTP/1.0 clients get no 1xx (RFC 9110 section 15.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_cleanly_with_tusd_lines_and_status_0(pytusd_factory, sig):
    server = pytusd_factory()
    create(server.url, 5)
    started = time.monotonic()
    server.signal(sig)
    assert server.wait(10) == 0
    print(f"exited {1000 * (time.monotonic() - started):.0f} ms after {sig.name}")  # shown with -s
    log = server.log()
    assert "Received interrupt signal. Shutting down pytusd..." in log
    assert "Shutdown completed. Goodbye!" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def test_keep_alive_pipelining_and_an_early_answer_on_one_connection(pytusd):
    path = create(pytusd.url, 5)
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        head = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode()
        patch = (f"PATCH {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                 tus_patch_headers(0, 5).items()) + "\r\nhello").encode()
        sock.sendall(head + patch + head)  # three requests in one write
        status, headers, _, rest = read_response(sock, head=True)
        assert status == 200 and headers["upload-offset"] == "0"
        status, headers, _, rest = read_response(sock, rest)
        assert status == 204 and headers["upload-offset"] == "5"
        status, headers, _, rest = read_response(sock, rest, head=True)
        assert status == 200 and headers["upload-offset"] == "5" and "connection" not in headers
        # An answer before the body (wrong offset): the connection closes after it, the body is not read.
        sock.sendall((f"PATCH {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                      tus_patch_headers(3, 100_000).items()) + "\r\n").encode() + b"x" * 1000)
        status, headers, _, rest = read_response(sock, rest)
        assert status == 409 and headers["connection"] == "close"
        assert sock.recv(100) == b""


def test_a_bodyless_request_without_connection_header_stays_open_and_http_1_0_closes(pytusd):
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(b"OPTIONS /files/ HTTP/1.0\r\nHost: x\r\n\r\n")
        status, headers, _, _ = read_response(sock)
        assert status in (200, 204) and headers["connection"] == "close"
        assert sock.recv(100) == b""
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _, _ = read_response(sock)
        assert headers["connection"] == "close" and sock.recv(100) == b""


def test_responses_carry_a_date_and_no_server_header(pytusd):
    r = httpx.options(pytusd.url)
    assert "date" in r.headers and "server" not in r.headers


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (reading and dropping anything it sends)."""
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_the_network_timeout_moves_with_each_request_and_ends_an_idle_connection(pytusd_factory):
    """One deadline per connection, moved by every request (``--network-timeout``, here 1 s): a connection that
    sends a request every 0.4 s for 3 s stays open, then is closed about 1 s after its last response; a head that
    trickles in is cut 1 s after its first byte, however often a byte comes."""
    server = pytusd_factory("--network-timeout", "1s")
    options = b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        rest = b""
        for _ in range(8):  # 3.2 s of requests 0.4 s apart: longer than the timeout, never idle that long
            sock.sendall(options)
            status, _, _, rest = read_response(sock, rest)
            assert status in (200, 204)
            time.sleep(0.4)
        sock.sendall(options)
        read_response(sock, rest)
        assert 0.7 < _closed_after(sock) < 3
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        try:
            for byte in options[:-4]:  # never the blank line: the head is never complete
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        took = time.monotonic() - started + _closed_after(sock)
        assert 0.7 < took < 3, f"a trickled head was held {took:.1f} s with --network-timeout 1s"
