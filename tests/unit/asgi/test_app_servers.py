"""TusApp is a plain ASGI app: other ASGI servers serve it too. Here uvicorn and hypercorn, each in a thread on a
free port, through a whole upload (create, two PATCHes, HEAD, GET). Without pytusd's own server there are no request
trailers, no splice and no 104: the app must not need them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pytusd import Config, FileLocker, FileStore, TusApp

TUS = {"Tus-Resumable": "1.0.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert thread.is_alive(), "the server thread ended"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError("the server did not listen")


@contextlib.contextmanager
def under_uvicorn(app: TusApp) -> Iterator[int]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_listening(port, thread)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def under_hypercorn(app: TusApp) -> Iterator[int]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig

    port = free_port()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_listening(port, thread)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)


@pytest.mark.parametrize("server", [under_uvicorn, under_hypercorn], ids=["uvicorn", "hypercorn"])
def test_a_whole_upload_under_another_asgi_server(tmp_path, server):
    app = TusApp(Config(store=FileStore(tmp_path), locker=FileLocker(tmp_path), base_path="/files/"))
    data = os.urandom(2 * 1024 * 1024 + 1)
    with server(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        r = client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                            "Upload-Metadata": "filename YS50eHQ="})
        assert r.status_code == 201, r.text
        url = r.headers["location"]
        assert url.startswith(f"http://127.0.0.1:{port}/files/")
        patch = {**TUS, "Content-Type": "application/offset+octet-stream"}
        half = len(data) // 2
        r = client.patch(url, headers={**patch, "Upload-Offset": "0"}, content=data[:half])
        assert r.status_code == 204 and r.headers["upload-offset"] == str(half)
        assert client.head(url, headers=TUS).headers["upload-offset"] == str(half)
        r = client.patch(url, headers={**patch, "Upload-Offset": str(half)}, content=iter([data[half:]]))  # chunked
        assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
        r = client.get(url)
        assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
        options = client.options("/files/")
        assert "checksum-trailer" not in options.headers["tus-extension"]  # no trailers without pytusd's server
