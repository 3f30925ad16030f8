"""Chunked request bodies whose framing never ends: endless trailer fields, one endless trailer line, an endless
chunk extension. pytusd's server (pytusd.server.h1) bounds each chunk-size line and the trailer section
(pytusd.server.MAX_CHUNK_LINE_SIZE, MAX_TRAILER_SIZE, MAX_TRAILER_FIELDS): past a limit the client gets 431
ERR_HEADERS_TOO_LARGE, the connection is closed, and the body bytes received before are stored.

Against a real pytusd process, except the splitting rules of :class:`pytusd.server.ChunkedFraming` checked beside
httptools itself, and the early-answer case, which needs an app that answers before reading (pytusd never does).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import threading
import time
from pathlib import Path

import httptools
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytusd.server import (
    MAX_CHUNK_LINE_SIZE,
    MAX_TRAILER_FIELDS,
    MAX_TRAILER_SIZE,
    ChunkedFraming,
    FramingLimits,
    FramingTooLarge,
)

from ..conftest import serve_in_thread

TUS = {"Tus-Resumable": "1.0.0"}
FLOOD = 64 << 20  # bytes of framing a hostile client tries to send
TRAILERS_431 = (b"ERR_HEADERS_TOO_LARGE: the trailer section may take %d bytes and %d fields at most\n"
                % (MAX_TRAILER_SIZE, MAX_TRAILER_FIELDS))
CHUNK_LINE_431 = (b"ERR_HEADERS_TOO_LARGE: a chunk-size line (with its chunk extensions) may take %d bytes at most\n"
                  % MAX_CHUNK_LINE_SIZE)


def create(server, length: int = 100) -> str:
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": str(length)})
    assert r.status_code == 201, r.text
    return r.headers["location"]


def offset_of(url: str) -> int:
    r = httpx.head(url, headers=TUS)
    assert r.status_code == 200, r.status_code
    return int(r.headers["upload-offset"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Traceback" in line or "level=ERROR" in line
            or "level=CRITICAL" in line]


def chunked_patch(port: int, url: str, *, trailer: str = "") -> socket.socket:
    """A socket with the head of a chunked PATCH at offset 0 sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # what was sent is (nearly) what was read
    path = "/" + url.split("/", 3)[3]
    head = (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            "Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n")
    if trailer:
        head += f"Trailer: {trailer}\r\n"
    sock.sendall((head + "\r\n").encode())
    return sock


def flood(sock: socket.socket, block: bytes) -> tuple[int, float]:
    """Send ``block`` again and again, up to FLOOD bytes, as fast as the server takes them: (bytes sent, seconds)
    until the server ended the connection."""
    sent, started = 0, time.monotonic()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < FLOOD:
            sock.sendall(block)
            sent += len(block)
    return sent, time.monotonic() - started


def read_to_end(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (a reset ends it too: what arrived before is returned)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def read_answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """One response (its head, and its body by Content-Length), or what arrived before the server closed."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def assert_431(answer: bytes, body: bytes) -> None:
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert b"tus-resumable: 1.0.0" in lines and b"content-type: text/plain; charset=utf-8" in lines
    assert b"connection: close" in lines and rest == body


# -- a real pytusd under floods ------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["many trailer fields", "one endless trailer line", "endless chunk extension"])
def test_endless_framing_is_cut_off_with_bounded_memory(pytusd_factory, kind):
    server = pytusd_factory()
    url = create(server)
    before = rss_kib(server.proc.pid)
    sock = chunked_patch(server.port, url)
    sock.sendall(b"5\r\nhello\r\n")
    if kind == "many trailer fields":
        sock.sendall(b"0\r\n")
        block, expected = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(64)), TRAILERS_431
    elif kind == "one endless trailer line":
        sock.sendall(b"0\r\nX-Pad: ")
        block, expected = b"a" * 65536, TRAILERS_431
    else:
        sock.sendall(b"5;ext=")
        block, expected = b"a" * 65536, CHUNK_LINE_431
    sent, seconds = flood(sock, block)
    answer = read_to_end(sock)
    sock.close()
    # The server stopped reading right past the limit: what the client got out before the reset is what the
    # socket buffers hold, not the flood.
    assert sent < 8 << 20 and seconds < 5, (sent, seconds)
    if answer:  # the reset may discard it on the client's side, depending on timing
        assert_431(answer, expected)
    grown = rss_kib(server.proc.pid) - before
    assert grown < 20 * 1024, f"the server grew by {grown} KiB"
    assert offset_of(url) == 5  # the chunk before the framing is stored
    assert httpx.patch(url, headers={**TUS, "Upload-Offset": "5", "Content-Type": "application/offset+octet-stream"},
                       content=b" world").headers["upload-offset"] == "11"  # and the upload goes on
    assert problems(server.log()) == []


@pytest.mark.e2e
def test_trailer_limits_are_exact(pytusd_factory):
    """A trailer section of exactly MAX_TRAILER_SIZE bytes and MAX_TRAILER_FIELDS fields (its checksum among them)
    is taken; one byte or one field more is 431. The chunk then ended without its checksum, so it is not kept (the
    checksum-trailer rule: all or nothing); without a checksum it would be (the flood test above)."""
    server = pytusd_factory()
    data = b"hello"
    checksum = b"Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(data).digest()) + b"\r\n"

    def trailers(size: int, fields: int) -> bytes:
        pads = [b"X-Pad-%02d: " % i for i in range(fields - 1)]
        fill = size - len(checksum) - 2 - sum(len(p) + 2 for p in pads)  # 2: each CRLF and the final blank line
        assert fill >= 0
        pads[0] += b"p" * fill
        section = checksum + b"".join(p + b"\r\n" for p in pads) + b"\r\n"
        assert len(section) == size
        return section

    def send(section: bytes) -> tuple[str, bytes]:
        url = create(server)
        sock = chunked_patch(server.port, url, trailer="Upload-Checksum")
        sock.sendall(b"5\r\n" + data + b"\r\n0\r\n" + section)  # in one piece: nothing is left unread
        answer = read_answer(sock)
        sock.close()
        return url, answer

    url, answer = send(trailers(MAX_TRAILER_SIZE, MAX_TRAILER_FIELDS))
    assert answer.startswith(b"HTTP/1.1 204 ") and b"\r\nupload-offset: 5\r\n" in answer, answer[:300]
    url, answer = send(trailers(MAX_TRAILER_SIZE + 1, MAX_TRAILER_FIELDS))
    assert_431(answer, TRAILERS_431)
    assert offset_of(url) == 0
    url, answer = send(trailers(MAX_TRAILER_SIZE, MAX_TRAILER_FIELDS + 1))
    assert_431(answer, TRAILERS_431)
    assert offset_of(url) == 0
    assert problems(server.log()) == []


@pytest.mark.e2e
def test_chunk_line_limit_is_exact(pytusd_factory):
    """A chunk-size line of MAX_CHUNK_LINE_SIZE bytes (extensions and CRLF included) is taken, one byte more is 431."""
    server = pytusd_factory()
    for size in (MAX_CHUNK_LINE_SIZE, MAX_CHUNK_LINE_SIZE + 1):
        url = create(server)
        sock = chunked_patch(server.port, url)
        line = b"5;" + b"x" * (size - 4) + b"\r\n"
        assert len(line) == size
        sock.sendall(line + b"hello\r\n0\r\n\r\n")
        answer = read_answer(sock)
        sock.close()
        if size == MAX_CHUNK_LINE_SIZE:
            assert answer.startswith(b"HTTP/1.1 204 ") and b"\r\nupload-offset: 5\r\n" in answer, answer[:200]
            assert offset_of(url) == 5
        else:
            assert_431(answer, CHUNK_LINE_431)
            assert offset_of(url) == 0
    assert problems(server.log()) == []


@pytest.mark.e2e
def test_checksum_trailer_still_works(pytusd_factory):
    server = pytusd_factory()
    data = b"hello world"
    url = create(server, len(data))
    good = b"sha256 " + base64.b64encode(hashlib.sha256(data).digest())
    for digest, status in ((b"sha256 " + base64.b64encode(hashlib.sha256(b"x").digest()), b"460"), (good, b"204")):
        sock = chunked_patch(server.port, url, trailer="Upload-Checksum")
        sock.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\nUpload-Checksum: " + digest + b"\r\n\r\n")
        sock.settimeout(10)
        answer = sock.recv(65536)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
    assert offset_of(url) == len(data)
    assert httpx.get(url).content == data


@pytest.mark.e2e
def test_pipelined_requests_around_chunked_bodies(pytusd_factory):
    """The server splits what arrives where heads and bodies end: a creation with a body, a chunked PATCH with a
    trailer and a HEAD sent in one piece are three requests, answered in order."""
    server = pytusd_factory()
    url = create(server, 10)
    path = "/" + url.split("/", 3)[3]
    creation = (b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 3\r\n"
                b"Content-Type: application/offset+octet-stream\r\nContent-Length: 3\r\n\r\nabc")
    chunked = (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
               "Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunked += b"5\r\nhello\r\n0\r\nX-Note: done\r\n\r\n"
    head = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(creation + chunked + head)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 3 or not answers.endswith(b"\r\n\r\n"):
            more = sock.recv(65536)
            assert more, answers
            answers += more
    statuses = [line.split(b" ")[1] for line in answers.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [b"201", b"204", b"200"], answers
    assert answers.count(b"upload-offset: 5\r\n") == 2 and b"upload-offset: 3\r\n" in answers
    assert problems(server.log()) == []


# -- an app that answered before the trailers: the connection is just closed ---------------------------------------


async def _answers_at_once(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.e2e
def test_answered_request_is_closed_without_431():
    with serve_in_thread(_answers_at_once) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(b"PATCH /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
        sent, seconds = flood(sock, b"X-Pad: " + b"a" * 65536 + b"\r\n")
        answer = read_to_end(sock)
        sock.close()
    assert sent < 8 << 20 and seconds < 5, (sent, seconds)
    if answer:  # never a 431 after it: the app's own answer, or nothing
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok"), answer
        assert b"431" not in answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- ChunkedFraming beside httptools: it ends a body where the parser does, and only counts framing ----------------


class _Events:
    def __init__(self) -> None:
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete_at: int | None = None  # bytes fed when the message completed
        self.fed = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            self.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete_at = self.fed


chunks = st.lists(st.binary(min_size=1, max_size=40), max_size=6)
extensions = st.sampled_from([b"", b";a", b";a=b", b';name="quoted value"', b";" + b"e" * 100])
trailer_fields = st.lists(st.tuples(st.sampled_from([b"X-A", b"Upload-Checksum", b"X-Long"]),
                                    st.binary(min_size=1, max_size=50).map(base64.b64encode)),
                          max_size=8)


sizes = st.sampled_from([b"%x", b"%X", b"%04x"])


@settings(max_examples=300, deadline=None)
@given(chunks, sizes, extensions, trailer_fields, st.lists(st.integers(min_value=1, max_value=30), max_size=20),
       st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]))
def test_framing_ends_where_the_parser_ends(data_chunks, size, extension, fields, cuts, after):
    """Whatever the chunks, extensions and trailers, and however the bytes are cut into reads, ChunkedFraming ends
    the body exactly where httptools completes the message, and never stops following a well-formed body."""
    body = b"".join(size % len(c) + extension + b"\r\n" + c + b"\r\n" for c in data_chunks)
    body += b"0" + extension + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    stream = body + after
    events = _Events()
    parser = httptools.HttpRequestParser(events)
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    framing = ChunkedFraming(FramingLimits())
    position, ended = 0, None
    for piece in _pieces(stream, cuts):
        end = framing.scan(piece)
        assert not framing.lost
        events.fed = position + end
        parser.feed_data(piece[:end])
        position += end
        if framing.done:
            ended = position
            break
        assert end == len(piece)
    assert ended == len(body) == events.complete_at
    assert events.body == b"".join(data_chunks)
    assert events.trailers == [(n, v) for n, v in fields]


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, position = [], 0
    for cut in cuts:
        if position >= len(data):
            break
        pieces.append(data[position:position + cut])
        position += cut
    if position < len(data):
        pieces.append(data[position:])
    return pieces


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=4096), st.sampled_from(["trailer bytes", "trailer fields", "chunk line"]))
def test_framing_raises_at_the_first_byte_past_a_limit(piece, which):
    """Fed in pieces of any size, a section too large is noticed within the piece that crosses its limit, and the
    bytes before the section are reported sound (``at``)."""
    limits = FramingLimits(chunk_line_size=100, trailer_size=200, trailer_fields=3)
    if which == "chunk line":
        prefix, hostile = b"5\r\nhello\r\n", b"5;" + b"e" * 1000
    elif which == "trailer bytes":
        prefix, hostile = b"5\r\nhello\r\n0\r\n", b"X-Pad: " + b"a" * 1000
    else:
        prefix, hostile = b"5\r\nhello\r\n0\r\n", b"A: 1\r\n" * 10
    stream = prefix + hostile
    framing = ChunkedFraming(limits)
    scanned = 0
    with pytest.raises(FramingTooLarge) as info:
        while True:
            part = stream[scanned:scanned + piece]
            assert part, "the whole stream passed"
            try:
                framing.scan(part)
            except FramingTooLarge as exc:
                assert exc.at == max(0, len(prefix) - scanned)  # where the hostile section began in this piece
                raise
            scanned += len(part)
    past = scanned + piece  # at most this much of the stream was ever given to the scanner
    limit = {"chunk line": 100, "trailer bytes": 200, "trailer fields": 4 * 6}[which]
    assert past - len(prefix) <= limit + piece
    assert "may take" in info.value.message
