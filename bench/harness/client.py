"""The raw-socket HTTP/1.1 client of the big uploads (scenarios 1, 4 and 5) and the two tus requests it makes.

One keep-alive connection, ``TCP_NODELAY``, the request head and then ``sendall()`` of a slice of one preallocated
memoryview, so that the client copies nothing in Python and is not the bottleneck.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.parse
from collections.abc import Sequence

from bench.harness.errors import BenchError


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


class RawHTTPClient:
    """One keep-alive HTTP/1.1 connection; reconnects when the server asks to close."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self._buf.clear()

    def __enter__(self) -> RawHTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: memoryview | None = None
    ) -> Response:
        sock = self.sock or self._connect()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body) if body is not None else 0}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            sock.sendall(head)
            if body is not None and len(body):
                sock.sendall(body)
        except OSError as exc:
            # The server may have answered (an error) and closed before taking the whole body: show its answer.
            try:
                early = self._read_response(method)
            except Exception:
                early = None
            self.close()
            detail = f"; server said {early.status} {early.body[:200]!r}" if early else ""
            raise BenchError(f"{method} {target}: sending failed: {exc}{detail}") from exc
        resp = self._read_response(method)
        if (resp.header("connection") or "").lower() == "close":
            self.close()
        return resp

    # -- response parsing --

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise BenchError("server closed the connection mid-response")
        self._buf += data

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            i = self._buf.find(marker)
            if i >= 0:
                out = bytes(self._buf[:i])
                del self._buf[: i + len(marker)]
                return out
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_response(self, method: str) -> Response:
        while True:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            status_line, *header_lines = head.split("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise BenchError(f"bad status line {status_line!r}")
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if 100 <= status < 200:
                continue  # interim response (we never send Expect, but be lenient)
            break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = self._read_until(b"\r\n").decode("latin-1")
                size = int(size_line.split(";", 1)[0].strip(), 16)
                if size == 0:
                    while self._read_until(b"\r\n"):  # trailers, up to the empty line
                        pass
                    break
                chunks.append(self._read_exact(size))
                self._read_exact(2)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        else:  # delimited by close
            assert self.sock is not None
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self._buf += data
            body = bytes(self._buf)
            self._buf.clear()
            self.close()
        return Response(status, reason, headers, body)


TUS = ("Tus-Resumable", "1.0.0")


def _upload_id(location: str) -> str:
    path = urllib.parse.urlsplit(location).path
    upload_id = path.rstrip("/").rsplit("/", 1)[-1]
    if not upload_id:
        raise BenchError(f"no upload ID in Location {location!r}")
    return upload_id


def create_upload(client: RawHTTPClient, base_path: str, size: int) -> tuple[str, str]:
    """POST (creation extension). Returns (request target for PATCH, upload id). No Upload-Metadata is sent:
    @tus/server rejects an empty one."""
    resp = client.request("POST", base_path, [TUS, ("Upload-Length", str(size))])
    if resp.status != 201:
        raise BenchError(f"POST {base_path}: {resp.status} {resp.reason} {resp.body[:300]!r}")
    location = resp.header("location")
    if not location:
        raise BenchError("POST: 201 without Location")
    # Absolute (http://host:port/files/id) or relative (/files/id, files/id): resolve against the POST URL.
    base_url = f"http://{client.host}:{client.port}{base_path}"
    parts = urllib.parse.urlsplit(urllib.parse.urljoin(base_url, location))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return target, _upload_id(location)


def patch_all(client: RawHTTPClient, target: str, data: memoryview, patch_size: int) -> int:
    """PATCH ``data`` in requests of ``patch_size`` bytes (one request if patch_size >= len(data))."""
    offset, size, requests = 0, len(data), 0
    while offset < size:
        n = min(patch_size, size - offset)
        resp = client.request(
            "PATCH",
            target,
            [TUS, ("Upload-Offset", str(offset)), ("Content-Type", "application/offset+octet-stream")],
            data[offset : offset + n],
        )
        if resp.status != 204:
            raise BenchError(f"PATCH at {offset}: {resp.status} {resp.reason} {resp.body[:300]!r}")
        new_offset = int(resp.header("upload-offset") or -1)
        if new_offset != offset + n:
            raise BenchError(f"PATCH at {offset}: Upload-Offset {new_offset}, expected {offset + n}")
        offset = new_offset
        requests += 1
    return requests
