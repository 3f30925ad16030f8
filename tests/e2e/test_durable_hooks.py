"""--hooks-durable with real processes: a real HTTP hook receiver (a standard-library server in this test), pytusd
processes started, SIGKILLed and restarted, nginx in front of three of them, the outbox in the upload folder or in a
real redis-server.

- test_outage_and_sigkill: the hook server is down for OUTAGE seconds (60, the issue's minute) while uploads finish;
  pytusd is then SIGKILLed before it could deliver, the hook server comes back, pytusd restarts: every post-create
  and post-finish arrives, post-create first, with the same Idempotency-Key as the undelivered attempts
  logged in the outbox.
- test_cluster_with_a_process_killed: three processes behind nginx share the outbox (folder, then Redis); the hook
  server is slow, so deliveries are in flight when one process is SIGKILLed: every finished upload's post-finish
  arrives at least once, in order per upload, repeats with the same ID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from testbed.services import free_port, nginx, redis_server

from .conftest import PytusdProcess

pytestmark = pytest.mark.e2e

OUTAGE = float(os.environ.get("PYTUSD_TEST_HOOK_OUTAGE", "60"))
TUS = {"Tus-Resumable": "1.0.0"}
DURABLE = ("--hooks-durable", "--hooks-http-retry", "0", "--hooks-http-timeout", "5s", "--hooks-durable-backoff",
           "0.2s", "--hooks-durable-max-backoff", "2s", "--hooks-durable-poll-interval", "0.2s",
           "--hooks-enabled-events", "post-create,post-finish")


class Receiver:
    """A hook server on ``port``: records (Hook-Name, Idempotency-Key, EventID, upload ID) per request received,
    answers after ``delay`` seconds; ``start()``/``stop()`` bring it up and down (down: nothing listens)."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.port = port
        self.delay = delay
        self.received: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                assert length < 1 << 20
                event = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.received.append((self.headers["Hook-Name"], self.headers["Idempotency-Key"],
                                              event.get("EventID", ""), event["Event"]["Upload"]["ID"]))
                time.sleep(receiver.delay)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a pytusd killed meanwhile
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def snapshot(self) -> list[tuple[str, str, str, str]]:
        with self.lock:
            return list(self.received)


def upload(base: str, data: bytes) -> str:
    """One upload, created then finished by a PATCH; its ID."""
    with httpx.Client(timeout=30) as client:
        r = client.post(base, headers={**TUS, "Upload-Length": str(len(data))})
        assert r.status_code == 201, r.text
        url = r.headers["Location"]
        r = client.patch(url, content=data, headers={**TUS, "Upload-Offset": "0",
                                                     "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 204, r.text
    return url.rstrip("/").rsplit("/", 1)[1]


def check_delivered(received: list[tuple[str, str, str, str]], ids: list[str], hooks: tuple[str, ...]) -> int:
    """Every upload's events arrived, the first arrivals in order, every repeat with the first one's key; the
    number of repeats."""
    repeats = 0
    for upload_id in ids:
        mine = [r for r in received if r[3] == upload_id]
        first: dict[str, str] = {}
        order = []
        for hook, key, event_id, _ in mine:
            assert key == event_id and len(key) == 32  # Idempotency-Key is the payload's EventID
            if hook in first:
                assert first[hook] == key, f"{hook} of {upload_id} repeated with another ID"
                repeats += 1
            else:
                first[hook] = key
                order.append(hook)
        assert order == list(hooks), f"{upload_id}: {order}"
    return repeats


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def admin(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytusd", "hooks", *args, "--upload-dir", str(data), *DURABLE,
                           "--hooks-http", "http://127.0.0.1:9/"], capture_output=True, text=True, timeout=60)


def test_outage_and_sigkill(tmp_path):
    port = free_port()
    receiver = Receiver(port)
    data = tmp_path / "data"
    hook = f"http://127.0.0.1:{port}/"
    server = PytusdProcess(data, *DURABLE, "--hooks-http", hook).start()
    try:
        began = time.monotonic()
        ids = [upload(server.url, os.urandom(1000)) for _ in range(5)]  # the hook server is down
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - began)))
        pending = admin(data, "pending", "--json")
        assert pending.returncode == 0, pending.stderr
        rows = json.loads(pending.stdout)
        assert sorted((r["upload_id"], r["hook"]) for r in rows) == sorted(
            (i, h) for i in ids for h in ("post-create", "post-finish"))
        assert all(r["state"] == "pending" for r in rows)
        creates = [r for r in rows if r["hook"] == "post-create"]
        assert all(r["attempts"] >= 3 and "connection attempts failed" in r["last_error"] for r in creates)
        # In order per upload: no post-finish is tried while its upload's post-create is pending.
        assert all(r["attempts"] == 0 for r in rows if r["hook"] == "post-finish")
        server.signal(signal.SIGKILL)  # between finish and delivery
        server.wait(10)
    finally:
        server.stop()
    receiver.start()
    try:
        restarted = PytusdProcess(data, *DURABLE, "--hooks-http", hook).start()
        try:
            wait_for(lambda: len({(r[0], r[3]) for r in receiver.snapshot()}) == 10, 30, "10 deliveries")
            wait_for(lambda: admin(data, "pending", "--json").stdout.strip() == "[]", 30, "an empty outbox")
        finally:
            restarted.stop()
        received = receiver.snapshot()
        check_delivered(received, ids, ("post-create", "post-finish"))
        keys = {(r["upload_id"], r["hook"]): r["id"] for r in rows}
        for hook_name, key, _, upload_id in received:
            assert keys[(upload_id, hook_name)] == key  # the ID recorded at the request, through the kill
    finally:
        receiver.stop()


@pytest.mark.parametrize("outbox", ["folder", "redis"])
def test_cluster_with_a_process_killed(tmp_path, outbox):
    port = free_port()
    receiver = Receiver(port, delay=0.7)  # slow: deliveries are in flight when a process dies
    receiver.start()
    extra: tuple[str, ...] = ()
    with contextlib.ExitStack() as stack:
        if outbox == "redis":
            url = stack.enter_context(redis_server(tmp_path / "redis"))
            extra = ("--locker", "redis", "--redis-url", url, "--hooks-durable-lease", "3s")
        data = tmp_path / "data"
        args = ("--behind-proxy", *DURABLE, "--hooks-http", f"http://127.0.0.1:{port}/", *extra)
        servers = [PytusdProcess(data, *args) for _ in range(3)]
        for server in servers:
            server.start()
            stack.callback(server.stop)
        front = stack.enter_context(nginx(tmp_path / "nginx", [s.port for s in servers]))
        base = f"http://127.0.0.1:{front}/files/"
        ids = [upload(base, os.urandom(2000)) for _ in range(6)]
        wait_for(lambda: len(receiver.snapshot()) >= 2, 20, "deliveries under way")
        servers[0].signal(signal.SIGKILL)
        servers[0].wait(10)
        wait_for(lambda: len({(r[0], r[3]) for r in receiver.snapshot()}) == 12, 60, "12 deliveries")
        time.sleep(1.0)  # repeats of what the killed process had in flight, if any, arrive too
        received = receiver.snapshot()
    receiver.stop()
    repeats = check_delivered(received, ids, ("post-create", "post-finish"))
    print(f"{outbox}: {len(received)} requests, {repeats} repeats")
