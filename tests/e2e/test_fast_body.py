"""Request bodies on pytusd's own server (pytusd.server.h1): a Content-Length body bypasses the HTTP parser and
reaches the store without copies. Whatever way the bytes are cut into TCP segments, the stored bytes and the requests that
follow on the same connection must come out exactly as through the parser."""

from __future__ import annotations

import os
import random
import socket
import time

import httpx
import pytest

from pytusd.server.h1 import Cycle

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


def create(url: str, length: int) -> str:
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length)})
    assert r.status_code == 201, r.text
    return "/files/" + r.headers["location"].rsplit("/", 1)[1]


def patch_head(path: str, offset: int, length: int) -> bytes:
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def head_request(path: str) -> bytes:
    return f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode()


class Responses:
    """Reads responses off one connection (bodies by Content-Length; HEAD responses have none)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self, head_only: bool = False) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; got {self.buf!r}"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf[length:]
        return int(status_line.split()[1]), headers


def send_in_pieces(sock: socket.socket, data: bytes, rng: random.Random) -> None:
    """``data`` in segments of random sizes (1 byte to 300 KB), with tiny pauses so they arrive apart."""
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 2, 7, 100, 4096, 65536, 300_000])
        sock.sendall(data[pos : pos + n])
        pos += n
        if rng.random() < 0.05:
            time.sleep(0.002)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bodies_cut_anywhere_and_pipelined_requests(pytusd, seed):
    rng = random.Random(seed)
    size = 3 * 1024 * 1024 + 11
    data = rng.randbytes(size)
    path = create(pytusd.url, size)
    cuts = sorted(rng.sample(range(1, size), 5))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size])]
    # One stream: PATCH, PATCH, ... each immediately followed by a HEAD, all cut at random places.
    stream = b""
    offset = 0
    for piece in pieces:
        stream += patch_head(path, offset, len(piece)) + piece + head_request(path)
        offset += len(piece)
    with socket.create_connection(("127.0.0.1", pytusd.port)) as sock:
        responses = Responses(sock)
        send_in_pieces(sock, stream, rng)
        offset = 0
        for piece in pieces:
            status, headers = responses.read()
            offset += len(piece)
            assert status == 204 and int(headers["upload-offset"]) == offset
            status, headers = responses.read(head_only=True)
            assert status == 200 and int(headers["upload-offset"]) == offset
    assert httpx.get(pytusd.url + path.rsplit("/", 1)[1]).content == data


def test_early_answer_then_the_connection_goes_on(pytusd):
    size = 2 * 1024 * 1024
    data = os.urandom(size)
    path = create(pytusd.url, size)
    with socket.create_connection(("127.0.0.1", pytusd.port)) as sock:
        responses = Responses(sock)
        # Wrong offset: 409 before the body has been read; the body that follows is read and dropped.
        sock.sendall(patch_head(path, 5, size - 5))
        status, headers = responses.read()
        assert status == 409
        if headers.get("connection") == "close":
            return  # the server may close instead; then there is nothing more to check on this connection
        sock.sendall(data[5:])
        sock.sendall(patch_head(path, 0, size) + data)
        status, headers = responses.read()
        assert status == 204 and int(headers["upload-offset"]) == size
    assert httpx.get(pytusd.url + path.rsplit("/", 1)[1]).content == data


def test_creation_with_upload_and_chunked_bodies_still_work(pytusd):
    data = os.urandom(300_000)
    r = httpx.post(
        pytusd.url,
        headers={**TUS, "Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream"},
        content=data,
    )
    assert r.status_code == 201 and r.headers["upload-offset"] == str(len(data))
    assert httpx.get(r.headers["location"]).content == data

    # Transfer-Encoding: chunked goes through the parser.
    path = create(pytusd.url, len(data))

    def gen():
        for i in range(0, len(data), 70_000):
            yield data[i : i + 70_000]

    r = httpx.patch(
        pytusd.url + path.rsplit("/", 1)[1],
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=gen(),
    )
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    assert httpx.get(pytusd.url + path.rsplit("/", 1)[1]).content == data


def _pipes_of(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux-only")
def test_a_plain_body_is_spliced_into_the_file(pytusd):
    """While a Content-Length PATCH streams, the server holds the pipe of splice(2); every byte lands in place,
    the bytes that arrived with the head included, and the request after it on the connection is read normally."""
    size = 5 * 1024 * 1024 + 3
    data = os.urandom(size)
    path = create(pytusd.url, size)
    upload_id = path.rsplit("/", 1)[1]
    before = _pipes_of(pytusd.proc.pid)
    with socket.create_connection(("127.0.0.1", pytusd.port)) as sock:
        responses = Responses(sock)
        sock.sendall(patch_head(path, 0, size) + data[:1000])
        deadline = time.monotonic() + 10
        while _pipes_of(pytusd.proc.pid) < before + 2:
            assert time.monotonic() < deadline, "no pipe: the body is not being spliced"
            time.sleep(0.01)
        sock.sendall(data[1000:] + head_request(path))
        status, headers = responses.read()
        assert status == 204 and int(headers["upload-offset"]) == size
        status, headers = responses.read(head_only=True)
        assert status == 200 and int(headers["upload-offset"]) == size
    assert (pytusd.upload_dir / upload_id).read_bytes() == data
    deadline = time.monotonic() + 5
    while _pipes_of(pytusd.proc.pid) > before:  # the pipe is closed once the body is in
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux-only")
def test_a_spliced_body_cut_off_keeps_what_arrived(pytusd):
    size = 4 * 1024 * 1024
    data = os.urandom(size)
    path = create(pytusd.url, size)
    upload_id = path.rsplit("/", 1)[1]
    sock = socket.create_connection(("127.0.0.1", pytusd.port))
    sock.sendall(patch_head(path, 0, size) + data[: 3 * 1024 * 1024 + 5])
    target = pytusd.upload_dir / upload_id
    deadline = time.monotonic() + 10
    while target.stat().st_size < 3 * 1024 * 1024 + 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sock.close()  # the client goes away mid-body
    time.sleep(0.3)
    r = httpx.head(pytusd.url + upload_id, headers=TUS)
    assert r.status_code == 200 and int(r.headers["upload-offset"]) == 3 * 1024 * 1024 + 5
    r = httpx.patch(
        pytusd.url + upload_id,
        headers={**TUS, "Upload-Offset": r.headers["upload-offset"], "Content-Type": "application/offset+octet-stream"},
        content=data[3 * 1024 * 1024 + 5 :],
    )
    assert r.status_code == 204 and int(r.headers["upload-offset"]) == size
    assert target.read_bytes() == data


@pytest.mark.parametrize("lengths", [
    [b"12", b"13"],  # repeated and different
    [b"-1"],
    [b"1e3"],
    [b"99999999999999999999999"],  # past 64 bits
])
def test_content_length_the_parser_refuses_gets_400(pytusd, lengths):
    head = b"PATCH /files/x HTTP/1.1\r\nHost: x\r\n" + b"".join(b"Content-Length: %s\r\n" % n for n in lengths)
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n")
        status, _ = Responses(sock).read()
    assert status == 400


def test_content_length_beside_chunked_gets_400(pytusd):
    with socket.create_connection(("127.0.0.1", pytusd.port), timeout=10) as sock:
        sock.sendall(b"PATCH /files/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        status, _ = Responses(sock).read()
    assert status == 400  # request smuggling: never both


class _Conn:
    """Just what a Cycle asks of its connection, to see what receive() hands on."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.updates = 0

    def _update_reading(self) -> None:
        self.updates += 1


async def test_a_body_piece_reaches_the_app_as_the_same_object():
    chunk = os.urandom(1000)
    scope = {"method": "PATCH", "http_version": "1.1"}
    cycle = Cycle(_Conn(), scope, keep_alive=True, expect_continue=False)
    cycle.piece(chunk)
    message = await cycle.receive()
    assert message["body"] is chunk and message["more_body"]
    cycle.piece(b"ab")
    cycle.piece(b"c")
    cycle.more_body = False
    assert await cycle.receive() == {"type": "http.request", "body": b"abc", "more_body": False}
