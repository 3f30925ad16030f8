"""The benchmark's many-connection tus client: asyncio Protocols on uvloop, no HTTP library.

Used by scenarios 2 (many small creation-with-upload requests), 3 (many slow uploads held open) and 5 (the small-
request variant). One :class:`Connection` is one keep-alive HTTP/1.1 connection with at most one request in flight;
the request head is a ready-made ``bytes`` and the body a slice of one preallocated ``memoryview``, so a request
costs the client a couple of ``transport.write`` calls and one small parse of the response head. Responses with
``Content-Length`` or a chunked body (@tus/server answers POST with an empty chunked body) are understood.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import resource
import socket
import time
import urllib.parse
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - the venv has it
    uvloop = None


def new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def raise_nofile(need: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``need`` (children inherit it). Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


class HTTPError(Exception):
    pass


@dataclasses.dataclass
class Reply:
    status: int
    head: bytes  # status line and header fields, as received
    body: bytes

    def header(self, name: str) -> str | None:
        key = b"\r\n" + name.lower().encode() + b":"
        low = self.head.lower()
        i = low.find(key)
        if i < 0:
            return None
        j = self.head.find(b"\r\n", i + len(key))
        return self.head[i + len(key) : j if j >= 0 else len(self.head)].strip().decode("latin-1")


class Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` sends a request and waits for its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self.bodyless = False  # the response in flight answers a HEAD: no body, whatever Content-Length says

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HTTPError(f"connection closed before a response ({exc or 'EOF'})"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(HTTPError("connection closed while sending"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            reply = self._parse()
            if reply is not None:
                self.waiter.set_result(reply)

    def _parse(self) -> Reply | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end])
        if head[9:10] == b"1":  # an interim 1xx response: skip it
            del buf[: end + 4]
            return self._parse()
        status = int(head[9:12])
        low = head.lower()
        pos = end + 4
        if self.bodyless:
            body = b""
        elif b"transfer-encoding: chunked" in low:
            chunks = []
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0 and buf[line_end : line_end + 4] != b"\r\n\r\n":
                        return None
                    pos = (trailer_end if trailer_end >= 0 else line_end) + 4
                    break
                if len(buf) < line_end + 2 + size + 2:
                    return None
                chunks.append(bytes(buf[line_end + 2 : line_end + 2 + size]))
                pos = line_end + 2 + size + 2
            body = b"".join(chunks)
        else:
            i = low.find(b"\r\ncontent-length:")
            length = 0
            if i >= 0:
                j = low.find(b"\r\n", i + 2)
                length = int(low[i + 17 : j if j >= 0 else len(low)].strip())
            if len(buf) < pos + length:
                return None
            body = bytes(buf[pos : pos + length])
            pos += length
        del buf[:pos]
        return Reply(status, head, body)

    async def send(self, data: bytes | memoryview) -> None:
        """Write ``data`` and wait while the transport's buffer is above its high-water mark."""
        if self.closed or self.transport is None:
            raise HTTPError("connection closed")
        self.transport.write(data)
        if self._paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def expect_reply(self) -> asyncio.Future[Reply]:
        self.waiter = asyncio.get_running_loop().create_future()
        reply = self._parse() if self.buf else None
        if reply is not None:
            self.waiter.set_result(reply)
        return self.waiter

    async def request(self, head: bytes, body: bytes | memoryview | None = None) -> Reply:
        self.bodyless = head.startswith(b"HEAD ")
        waiter = self.expect_reply()
        await self.send(head)
        if body is not None and len(body):
            await self.send(body)
        return await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def location_target(location: str, host: str, base_path: str) -> str:
    url = urllib.parse.urljoin(f"http://{host}{base_path}", location)
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


TUS = ("Tus-Resumable", "1.0.0")


# --------------------------------------------------------------------------------------------------------------
# Scenario 2: many clients, each creating uploads with their whole body in the POST (creation-with-upload)


async def _creation_with_upload_load(
    port: int,
    base_path: str,
    clients: int,
    body: memoryview,
    warmup_s: float,
    duration_s: float,
    on_window: Any = None,
    head_mode: bool = False,
) -> dict[str, Any]:
    """``head_mode``: each client creates one upload (its body in the POST) and then sends HEAD requests for it,
    each to be answered 200 with the full Upload-Offset; only the HEADs are counted."""
    host = f"127.0.0.1:{port}"
    size = len(body)
    head = request_head(
        "POST",
        base_path,
        host,
        [TUS, ("Upload-Length", str(size)), ("Content-Type", "application/offset+octet-stream")],
        size,
    )
    expect_offset = str(size)
    loop = asyncio.get_running_loop()
    state = {"phase": "warmup"}
    window: dict[str, float] = {}
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "warmup": 0, "created": 0}
    errors: list[str] = []

    async def client(i: int) -> None:
        conn: Connection | None = None
        # Spread the first requests over 50 ms so that the clients do not march in lock step.
        await asyncio.sleep(random.random() * 0.05)
        head_req = b""
        while state["phase"] != "stop":
            try:
                if conn is None or conn.closed:
                    conn = await Connection.open("127.0.0.1", port)
                if head_mode and not head_req:
                    reply = await conn.request(head, body)
                    location = reply.header("location")
                    if reply.status != 201 or reply.header("upload-offset") != expect_offset or not location:
                        raise HTTPError(f"{reply.status} {reply.head[:200]!r} {reply.body[:200]!r}")
                    counts["created"] += 1
                    head_req = request_head("HEAD", location_target(location, host, base_path), host, [TUS], 0)
                    continue
                phase = state["phase"]
                t0 = loop.time()
                reply = await (conn.request(head_req) if head_mode else conn.request(head, body))
                t1 = loop.time()
                if reply.status != (200 if head_mode else 201) or reply.header("upload-offset") != expect_offset:
                    raise HTTPError(f"{reply.status} {reply.head[:200]!r} {reply.body[:200]!r}")
                if (reply.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
                if phase == "measure" and state["phase"] == "measure":
                    latencies.append(t1 - t0)
                    counts["ok"] += 1
                elif phase == "warmup":
                    counts["warmup"] += 1
            except (OSError, HTTPError, ValueError) as exc:
                counts["errors"] += 1
                if len(errors) < 20:
                    errors.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
        if conn is not None:
            conn.close()

    tasks = [loop.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(warmup_s)
    if on_window is not None:
        on_window("start")
    state["phase"] = "measure"
    cpu0 = time.process_time()
    window["start"] = loop.time()
    await asyncio.sleep(duration_s)
    state["phase"] = "stop"
    window["end"] = loop.time()
    client_cpu = time.process_time() - cpu0
    if on_window is not None:
        on_window("end")
    await asyncio.wait(tasks, timeout=60)
    for t in tasks:
        t.cancel()
    elapsed = window["end"] - window["start"]
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "requests": counts["ok"],
        "warmup_requests": counts["warmup"],
        "created": counts["created"] if head_mode else counts["ok"] + counts["warmup"],
        "errors": counts["errors"],
        "error_samples": errors,
        "window_s": elapsed,
        "req_per_s": counts["ok"] / elapsed,
        "mb_per_s": counts["ok"] * size / elapsed / 1e6,
        "p50_ms": pct(0.50) * 1000,
        "p90_ms": pct(0.90) * 1000,
        "p99_ms": pct(0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "client_cpu_s": client_cpu,
    }


def creation_with_upload_load(
    port: int, base_path: str, clients: int, body: memoryview, warmup_s: float, duration_s: float,
    on_window: Any = None, head_mode: bool = False,
) -> dict[str, Any]:
    loop = new_loop()
    try:
        return loop.run_until_complete(
            _creation_with_upload_load(port, base_path, clients, body, warmup_s, duration_s, on_window, head_mode)
        )
    finally:
        loop.close()


# --------------------------------------------------------------------------------------------------------------
# Scenario 3: many slow uploads held open


async def _slow_uploads(
    port: int,
    base_path: str,
    uploads: int,
    chunk: int,
    chunks: int,
    interval_s: float,
    ramp_s: float,
    on_held: Any = None,
) -> dict[str, Any]:
    host = f"127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    size = chunk * chunks
    data = memoryview(os.urandom(chunk))
    post_head = request_head("POST", base_path, host, [TUS, ("Upload-Length", str(size))], 0)
    results = {"ok": 0, "errors": 0, "open": 0, "max_open": 0}
    errors: list[str] = []
    all_open = asyncio.Event()
    started_at = loop.time()
    conns: list[Connection] = []

    async def one(i: int) -> None:
        await asyncio.sleep(ramp_s * i / uploads)
        conn: Connection | None = None
        opened = False
        try:
            conn = await Connection.open("127.0.0.1", port)
            conns.append(conn)
            reply = await conn.request(post_head)
            if reply.status != 201:
                raise HTTPError(f"POST {reply.status} {reply.body[:200]!r}")
            target = location_target(reply.header("location") or "", host, base_path)
            if (reply.header("connection") or "").lower() == "close":
                conn.close()
                conn = await Connection.open("127.0.0.1", port)
                conns.append(conn)
            patch_head = request_head(
                "PATCH",
                target,
                host,
                [TUS, ("Upload-Offset", "0"), ("Content-Type", "application/offset+octet-stream")],
                size,
            )
            waiter = conn.expect_reply()
            await conn.send(patch_head)
            results["open"] += 1
            opened = True
            results["max_open"] = max(results["max_open"], results["open"])
            if results["open"] == uploads:
                all_open.set()
            # One chunk per interval, each upload at its own phase of the interval.
            phase = (i / uploads) * interval_s
            start = loop.time()
            for n in range(chunks):
                await asyncio.sleep(max(0.0, start + phase + n * interval_s - loop.time()))
                if waiter.done():
                    break  # the server answered early: an error
                await conn.send(data)
            reply = await asyncio.wait_for(waiter, 120)
            if reply.status != 204 or reply.header("upload-offset") != str(size):
                raise HTTPError(f"PATCH {reply.status} {reply.head[:200]!r} {reply.body[:200]!r}")
            results["ok"] += 1
        except (OSError, HTTPError, ValueError, asyncio.TimeoutError) as exc:
            results["errors"] += 1
            if len(errors) < 20:
                errors.append(f"upload {i}: {exc!r}")
        finally:
            if opened:
                results["open"] -= 1
            if conn is not None:
                conn.close()

    tasks = [loop.create_task(one(i)) for i in range(uploads)]
    held: dict[str, Any] = {}

    async def watch() -> None:
        try:
            await asyncio.wait_for(all_open.wait(), ramp_s + 60)
        except asyncio.TimeoutError:
            return
        held["all_open_after_s"] = loop.time() - started_at
        # Half-way through the hold: the server has every upload open and has received some chunks of each.
        await asyncio.sleep(min(interval_s * chunks / 2, 10))
        if on_held is not None:
            held.update(on_held())

    watcher = loop.create_task(watch())
    await asyncio.gather(*tasks)
    watcher.cancel()
    try:
        await watcher
    except asyncio.CancelledError:
        pass
    return {
        "uploads": uploads,
        "ok": results["ok"],
        "errors": results["errors"],
        "error_samples": errors,
        "max_open": results["max_open"],
        "upload_size": size,
        "chunk": chunk,
        "chunks": chunks,
        "interval_s": interval_s,
        "wall_s": loop.time() - started_at,
        **held,
    }


def slow_uploads(
    port: int,
    base_path: str,
    uploads: int,
    chunk: int,
    chunks: int,
    interval_s: float,
    ramp_s: float,
    on_held: Any = None,
) -> dict[str, Any]:
    loop = new_loop()
    try:
        return loop.run_until_complete(
            _slow_uploads(port, base_path, uploads, chunk, chunks, interval_s, ramp_s, on_held)
        )
    finally:
        loop.close()
