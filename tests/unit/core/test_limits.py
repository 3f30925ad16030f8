"""Hostile clients, in-process: --max-concurrent-uploads and --max-uploads-per-client (pytusd.core.limits); the
slow-body rule is in test_body.py.

The same through the real command (sockets, many connections) is in tests/e2e/test_hostile.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pytusd import Config, FileStore, MemoryLocker, TusApp, errors
from pytusd.core.limits import client_key


TUS = {"tus-resumable": "1.0.0"}
PATCH_TYPE = {"content-type": "application/offset+octet-stream"}


class Call:
    """A request whose body the test hands over piece by piece; the app runs as a task meanwhile."""

    def __init__(self, app: TusApp, method: str, path: str, headers: dict[str, str], length: int,
                 client: str = "127.0.0.1") -> None:
        self.chunks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.receives = 0
        self.sent: list[dict[str, Any]] = []
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw += [(b"host", b"tus.test"), (b"content-length", str(length).encode())]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": raw,
            "client": (client, 40000), "server": ("tus.test", 80),
        }
        self.task = asyncio.get_running_loop().create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        self.receives += 1
        return await self.chunks.get()

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def feed(self, data: bytes, more: bool = True) -> None:
        self.chunks.put_nowait({"type": "http.request", "body": data, "more_body": more})

    async def result(self) -> tuple[int, dict[str, str], bytes]:
        await asyncio.wait_for(self.task, 10)
        start = self.sent[0]
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, b"".join(m.get("body", b"") for m in self.sent[1:])


def make_app(tmp_path, **config: Any) -> TusApp:
    return TusApp(Config(store=FileStore(tmp_path / "data"), locker=MemoryLocker(), **config))


async def new_upload(app: TusApp, size: int = 100) -> str:
    call = Call(app, "POST", "/files/", {**TUS, "upload-length": str(size)}, 0)
    call.feed(b"", more=False)
    status, headers, _ = await call.result()
    assert status == 201
    return "/files/" + headers["location"].rsplit("/", 1)[1]


def start_patch(app: TusApp, path: str, length: int = 100, client: str = "127.0.0.1") -> Call:
    return Call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "0"}, length, client)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_max_concurrent_uploads_answers_503_with_retry_after_without_reading_the_body(tmp_path):
    app = make_app(tmp_path, max_concurrent_uploads=2)
    paths = [await new_upload(app) for _ in range(4)]
    writing = [start_patch(app, paths[0]), start_patch(app, paths[1])]
    for call in writing:
        call.feed(b"x" * 10)
    await settle()
    assert app.upload_slots.active == 2

    refused = start_patch(app, paths[2])
    status, headers, body = await refused.result()
    assert status == 503 and body.startswith(b"ERR_TOO_MANY_UPLOADS: ")
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert refused.receives == 0  # not a byte of its body was read
    # Creation with data takes a slot too; creation without data and HEAD do not.
    with_data = Call(app, "POST", "/files/", {**TUS, **PATCH_TYPE, "upload-length": "5"}, 5)
    assert (await with_data.result())[0] == 503 and with_data.receives == 0
    assert await new_upload(app)
    head = Call(app, "HEAD", paths[3], TUS, 0)  # (not paths[0]: a HEAD takes the lock, interrupting its PATCH)
    assert (await head.result())[0] == 200

    writing[0].feed(b"y" * 90, more=False)
    assert (await writing[0].result())[0] == 204
    assert app.upload_slots.active == 1
    accepted = start_patch(app, paths[2], 5)
    accepted.feed(b"z" * 5, more=False)
    status, headers, _ = await accepted.result()
    assert status == 204 and headers["upload-offset"] == "5"

    writing[1].feed(b"", more=False)  # ends short of its Content-Length: interrupted, the slot still comes back
    await writing[1].result()
    assert app.upload_slots.active == 0


async def test_a_failed_or_refused_write_gives_its_slot_back(tmp_path):
    app = make_app(tmp_path, max_concurrent_uploads=1)
    path = await new_upload(app, 5)
    for _ in range(3):
        bad = Call(app, "PATCH", path, {**TUS, **PATCH_TYPE, "upload-offset": "3"}, 2)  # wrong offset: 409
        bad.feed(b"ab", more=False)
        assert (await bad.result())[0] == 409
    assert app.upload_slots.active == 0


async def test_max_uploads_per_client_answers_429_per_ip(tmp_path):
    app = make_app(tmp_path, max_uploads_per_client=1)
    paths = [await new_upload(app) for _ in range(3)]
    first = start_patch(app, paths[0], client="192.0.2.1")
    first.feed(b"x")
    await settle()
    same = start_patch(app, paths[1], client="192.0.2.1")
    status, headers, body = await same.result()
    assert status == 429 and body.startswith(b"ERR_TOO_MANY_CLIENT_UPLOADS: ")
    assert headers["retry-after"] == "1" and same.receives == 0
    other = start_patch(app, paths[1], 3, client="192.0.2.2")
    other.feed(b"abc", more=False)
    assert (await other.result())[0] == 204
    first.feed(b"y" * 99, more=False)
    assert (await first.result())[0] == 204
    assert app.upload_slots.per_client == {}


async def test_per_client_limit_behind_a_proxy_counts_the_address_the_proxy_saw(tmp_path):
    app = make_app(tmp_path, max_uploads_per_client=1, behind_proxy=True)
    paths = [await new_upload(app) for _ in range(3)]

    def via_proxy(path: str, forwarded_for: str) -> Call:
        headers = {**TUS, **PATCH_TYPE, "upload-offset": "0", "x-forwarded-for": forwarded_for}
        return Call(app, "PATCH", path, headers, 100, client="10.0.0.1")  # every request comes from the proxy

    first = via_proxy(paths[0], "198.51.100.7")
    first.feed(b"x")
    await settle()
    # The same client claiming another address in front: the proxy appended the real one, which still counts.
    spoofed = via_proxy(paths[1], "203.0.113.99, 198.51.100.7")
    assert (await spoofed.result())[0] == 429
    other = via_proxy(paths[2], "198.51.100.8")
    other.feed(b"z" * 100, more=False)
    assert (await other.result())[0] == 204
    first.feed(b"", more=False)
    await first.result()


@pytest.mark.parametrize(
    ("headers", "behind_proxy", "expected"),
    [
        ({}, False, "192.0.2.1"),
        ({"x-forwarded-for": "198.51.100.7"}, False, "192.0.2.1"),
        ({"x-forwarded-for": "1.1.1.1, 198.51.100.7"}, True, "198.51.100.7"),
        ({"x-forwarded-for": "198.51.100.7:4711"}, True, "198.51.100.7"),
        ({"forwarded": 'for=1.1.1.1, for="[2001:db8::1]:4711"'}, True, "2001:db8::1"),
        ({"forwarded": "for=198.51.100.9;proto=https"}, True, "198.51.100.9"),
        ({}, True, "192.0.2.1"),
    ],
)
def test_client_key(headers, behind_proxy, expected):
    class FakeRequest:
        def __init__(self) -> None:
            self.scope = {"client": ("192.0.2.1", 5555)}
            self.headers = headers

    assert client_key(FakeRequest(), behind_proxy) == expected  # type: ignore[arg-type]


def test_limit_flags_reach_the_config():
    from pytusd.server.cli.compose import config_from_args
    from pytusd.server.cli.flags import build_parser

    args = build_parser().parse_args(
        ["--upload-dir", "/tmp/x", "--max-concurrent-uploads", "8", "--max-uploads-per-client", "2",
         "--min-body-rate", "500"]
    )
    config = config_from_args(args)
    assert (config.max_concurrent_uploads, config.max_uploads_per_client, config.min_body_rate) == (8, 2, 500.0)
    default = config_from_args(build_parser().parse_args(["--upload-dir", "/tmp/x"]))
    assert (default.max_concurrent_uploads, default.max_uploads_per_client, default.min_body_rate) == (0, 0, 10.0)


def test_config_refuses_negative_limits(tmp_path):
    with pytest.raises(ValueError):
        Config(store=FileStore(tmp_path), max_concurrent_uploads=-1)
    with pytest.raises(ValueError):
        Config(store=FileStore(tmp_path), min_body_rate=-1)
    assert errors.ERR_TOO_MANY_UPLOADS.status == 503 and errors.ERR_TOO_MANY_CLIENT_UPLOADS.status == 429
