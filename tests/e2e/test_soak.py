"""Soak: 500 clients upload at once for a bounded time, aborting PATCHes part-way at random and resuming.

Each client uploads one file after another (16 KiB - 512 KiB of random bytes) to a real pytusd process on the file
store, in random chunks (some with Upload-Checksum, some as creation-with-upload). About one PATCH in five is
abandoned part-way: the client sends some of the body and closes the connection (half of them with a TCP reset).
It then asks HEAD for the offset and goes on from there. A finished upload is compared byte for byte with what was
sent (on disk and through GET), then deleted. At the end: no unexpected answer, no ERROR in pytusd's log, and
pytusd's peak RSS (VmHWM) under a generous bound.

``PYTUSD_SOAK_SECONDS`` sets how long new uploads are started (default 20 s in the normal suite; README's figures
are from 60 s), ``PYTUSD_SOAK_CLIENTS`` how many clients run at once (default 500).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field

import pytest

from .test_hostile import ensure_fd_limit, error_lines

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("PYTUSD_SOAK_SECONDS", "20"))
CLIENTS = int(os.environ.get("PYTUSD_SOAK_CLIENTS", "500"))
RSS_LIMIT_MIB = 300


class Aborted(Exception):
    """This client abandoned its own request on purpose."""


@dataclass
class Stats:
    uploads: int = 0
    bytes: int = 0
    requests: int = 0
    aborted: int = 0
    checksummed: int = 0
    conflicts: int = 0
    unexpected: list[str] = field(default_factory=list)


async def http(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"",
               abort_after: int | None = None, reset: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own. With ``abort_after``, only that much of the body is sent, then the
    connection is closed (``reset``: with a TCP RST) and Aborted raised."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
                "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if abort_after is not None:
            writer.write(body[:abort_after])
            await writer.drain()
            await asyncio.sleep(random.uniform(0, 0.05))
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise Aborted
        writer.write(body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        response_headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                response_headers[name.strip().lower()] = value.strip()
        length = int(response_headers.get("content-length", "0"))
        content = await asyncio.wait_for(reader.readexactly(length), 60) if length and method != "HEAD" else b""
        return int(status_line.split()[1]), response_headers, content
    finally:
        writer.close()


def stored_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def client(index: int, port: int, upload_dir: str, deadline: float, stats: Stats) -> None:
    rng = random.Random(index)
    await asyncio.sleep(rng.uniform(0, 1))  # not all at the same instant
    while time.monotonic() < deadline:
        data = rng.randbytes(rng.randint(16 << 10, 512 << 10))
        await one_upload(rng, port, upload_dir, data, stats)


async def one_upload(rng: random.Random, port: int, upload_dir: str, data: bytes, stats: Stats) -> None:
    tus = {"Tus-Resumable": "1.0.0"}
    offset_type = {"Content-Type": "application/offset+octet-stream"}
    first = data[: rng.randint(1, 64 << 10)] if rng.random() < 0.3 else b""
    headers = {**tus, "Upload-Length": str(len(data)), **(offset_type if first else {})}
    stats.requests += 1
    status, answer, _ = await http(port, "POST", "/files/", headers, first)
    if status != 201:
        stats.unexpected.append(f"POST -> {status}")
        return
    path = "/files/" + answer["location"].rsplit("/", 1)[1]
    offset = int(answer.get("upload-offset", "0"))
    while offset < len(data):
        chunk = data[offset : offset + rng.choice([8 << 10, 64 << 10, 256 << 10, 1 << 20])]
        headers = {**tus, **offset_type, "Upload-Offset": str(offset)}
        if rng.random() < 0.25:
            headers["Upload-Checksum"] = "sha1 " + base64.b64encode(hashlib.sha1(chunk).digest()).decode()
            stats.checksummed += 1
        stats.requests += 1
        try:
            if rng.random() < 0.2:
                await http(port, "PATCH", path, headers, chunk, abort_after=rng.randint(0, len(chunk) - 1),
                           reset=rng.random() < 0.5)
            status, answer, body = await http(port, "PATCH", path, headers, chunk)
        except Aborted:
            stats.aborted += 1
            # Resume: the server's offset is the truth (HEAD takes over the lock from the abandoned PATCH).
            stats.requests += 1
            status, answer, _ = await http(port, "HEAD", path, tus)
            if status != 200:
                stats.unexpected.append(f"HEAD after abort -> {status}")
                return
            new_offset = int(answer["upload-offset"])
            if not offset <= new_offset <= offset + len(chunk):
                stats.unexpected.append(f"offset {new_offset} after an abort at {offset} + {len(chunk)}")
                return
            offset = new_offset
            continue
        if status == 409:  # cannot happen without a lost answer; counted, then resumed from HEAD
            stats.conflicts += 1
            status, answer, _ = await http(port, "HEAD", path, tus)
            offset = int(answer["upload-offset"])
            continue
        if status != 204 or int(answer["upload-offset"]) != offset + len(chunk):
            stats.unexpected.append(f"PATCH -> {status} {answer.get('upload-offset')} {body[:100]!r}")
            return
        offset += len(chunk)
    if stored_bytes(os.path.join(upload_dir, path.rsplit("/", 1)[1])) != data:
        stats.unexpected.append(f"{path}: stored bytes differ from the ones sent")
        return
    if rng.random() < 0.1:  # and through the server now and then
        stats.requests += 1
        status, _, content = await http(port, "GET", path, {})
        if status != 200 or content != data:
            stats.unexpected.append(f"{path}: GET differs")
            return
    stats.requests += 1
    status, _, _ = await http(port, "DELETE", path, tus)
    if status != 204:
        stats.unexpected.append(f"DELETE -> {status}")
        return
    stats.uploads += 1
    stats.bytes += len(data)


def test_soak_500_uploads_with_interruptions(pytusd_factory):
    ensure_fd_limit(4 * CLIENTS + 256)
    server = pytusd_factory()
    stats = Stats()

    async def run() -> float:
        started = time.monotonic()
        deadline = started + SECONDS
        tasks = [asyncio.create_task(client(i, server.port, str(server.upload_dir), deadline, stats))
                 for i in range(CLIENTS)]
        await asyncio.wait_for(asyncio.gather(*tasks), SECONDS + 120)
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    rss_mib = server.rss_peak_kib() / 1024
    log = server.log()
    interrupted = log.count("interrupted at offset")
    print(
        f"\nsoak: {CLIENTS} clients for {SECONDS:g} s (ended after {elapsed:.1f} s): {stats.uploads} uploads "
        f"({stats.bytes / 2**20:.0f} MiB) byte-exact, {stats.requests} requests, {stats.aborted} PATCHes aborted "
        f"part-way ({interrupted} logged by pytusd as interrupted), {stats.checksummed} with Upload-Checksum, "
        f"{stats.conflicts} offset conflicts; pytusd peak RSS {rss_mib:.0f} MiB"
    )
    assert stats.unexpected == []
    assert stats.uploads >= CLIENTS and stats.aborted > 0
    assert error_lines(log, ("ERROR", "CRITICAL", "WARNING")) == []
    assert rss_mib < RSS_LIMIT_MIB
    assert [name for name in os.listdir(server.upload_dir) if not name.endswith((".lock", ".stop"))] == []
