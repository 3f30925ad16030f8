"""A bare tus sink for the benchmark: the ceiling of this machine, not a server anyone should use.

    python raw_sink.py <upload-dir> <port>

Just enough of tus for bench/run.py's clients: POST with Upload-Length -> 201 + Location (with a body, as in
creation-with-upload: the body is written too, and the 201 has Upload-Offset), PATCH with Content-Length -> body
written with os.pwrite as it arrives (in data_received) -> 204 + Upload-Offset. One asyncio Protocol, no
framework, no validation beyond what keeps the bytes in the right place, no locks, no .info files. Comparing
pytusd with this in the same run shows how much of the machine's loopback + page-cache throughput a real server
leaves on the table (opt in with ``scripts/bench --servers pytusd,tus-node,raw-sink``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys

try:
    import uvloop
except ImportError:  # stdlib asyncio measured about the same for this loop (bench/NOTES.md)
    uvloop = None


class SinkProtocol(asyncio.Protocol):
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.fd = -1
        self.offset = 0
        self.remaining = 0
        self.created = ""  # the Location of a POST whose body is being written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.remaining:
                n = min(self.remaining, len(view))
                written = os.pwrite(self.fd, view[:n], self.offset)
                while written < n:
                    written += os.pwrite(self.fd, view[written:n], self.offset + written)
                self.offset += n
                self.remaining -= n
                view = view[n:]
                if not self.remaining:
                    self._finish_patch()
                continue
            self.head += view
            view = memoryview(b"")
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            rest = bytes(self.head[end + 4 :])
            self._start(bytes(self.head[:end]))
            self.head.clear()
            view = memoryview(rest)

    def _respond(self, status: bytes, headers: list[tuple[str, str]]) -> None:
        lines = [b"HTTP/1.1 " + status] + [f"{k}: {v}".encode() for k, v in headers]
        assert self.transport is not None
        self.transport.write(b"\r\n".join(lines) + b"\r\nTus-Resumable: 1.0.0\r\nContent-Length: 0\r\n\r\n")

    def _start(self, head: bytes) -> None:
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        upload_id = target.rstrip("/").rsplit("/", 1)[-1]
        if method == "POST":
            upload_id = secrets.token_hex(16)
            path = os.path.join(self.directory, upload_id)
            if length:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self.offset = 0
                self.remaining = length
                self.created = f"/files/{upload_id}"
            else:
                with open(path, "wb"):
                    pass
                self._respond(b"201 Created", [("Location", f"/files/{upload_id}")])
        elif method == "PATCH" and all(c in "0123456789abcdef" for c in upload_id) and upload_id:
            self.fd = os.open(os.path.join(self.directory, upload_id), os.O_WRONLY | os.O_CLOEXEC)
            self.offset = int(headers["upload-offset"])
            self.remaining = length
            if not length:
                self._finish_patch()
        else:
            self._respond(b"400 Bad Request", [("Connection", "close")])
            assert self.transport is not None
            self.transport.close()

    def _finish_patch(self) -> None:
        os.close(self.fd)
        self.fd = -1
        if self.created:
            location, self.created = self.created, ""
            self._respond(b"201 Created", [("Location", location), ("Upload-Offset", str(self.offset))])
        else:
            self._respond(b"204 No Content", [("Upload-Offset", str(self.offset))])


async def serve(directory: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(directory), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"raw sink listening on http://127.0.0.1:{port}/files (dir {directory})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python raw_sink.py <upload-dir> <port>")
    directory, port = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    if uvloop is not None:
        uvloop.run(serve(directory, port))
    else:
        asyncio.run(serve(directory, port))


if __name__ == "__main__":
    main()
