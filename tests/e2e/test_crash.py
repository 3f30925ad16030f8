"""Crash safety: the server is killed with SIGKILL at random moments while several uploads run, then restarted.

Clients send random chunk sizes (some PATCHes with Upload-Checksum, which write all-or-nothing) and resume after
every crash from the offset the server reports. While the server is down the test checks the upload folder: every
``.info`` is readable, and every data file is a prefix of its source (no byte stored that was not sent, nothing
corrupted). At the end every upload is byte-exact. ``PYTUSD_CRASH_KILLS`` sets the number of kills (default 50).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import PytusdProcess

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
KILLS = int(os.environ.get("PYTUSD_CRASH_KILLS", "50"))
UPLOADS = 4


class Client(threading.Thread):
    """Uploads ``data`` to ``url`` in random chunks, resuming after every failure, until done or told to stop."""

    def __init__(self, base: str, data: bytes, seed: int) -> None:
        super().__init__(daemon=True)
        self.base, self.data, self.rng = base, data, random.Random(seed)
        self.url: str | None = None
        self.done = threading.Event()
        self.stop = threading.Event()
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    if self.url is None:
                        r = http.post(self.base, headers={**TUS, "Upload-Length": str(len(self.data))})
                        assert r.status_code == 201, r.text
                        self.url = r.headers["location"]
                    r = http.head(self.url, headers=TUS)
                    if r.status_code == 423 or r.status_code >= 500:
                        raise httpx.TransportError(f"{r.status_code}")
                    assert r.status_code == 200, (r.status_code, r.text)
                    offset = int(r.headers["upload-offset"])
                    if offset == len(self.data):
                        self.done.set()
                        return
                    size = self.rng.choice([1, 1000, 64 << 10, 512 << 10, 2 << 20, 4 << 20])
                    chunk = self.data[offset : offset + size]
                    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
                    if self.rng.random() < 0.3:
                        digest = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
                        headers["Upload-Checksum"] = f"sha1 {digest}"
                    r = http.patch(self.url, headers=headers, content=chunk)
                    # 409: a crash lost the answer of an earlier PATCH that was stored; HEAD tells the truth.
                    assert r.status_code in (204, 409, 400, 500, 503), (r.status_code, r.text)
                except (httpx.TransportError, httpx.TimeoutException):
                    self.failures += 1
                    time.sleep(0.05)


def check_folder(folder: Path, sources: dict[str, bytes]) -> None:
    """While the server is down: every .info parses and every data file is a prefix of its source."""
    for info_path in folder.glob("*.info"):
        info = json.loads(info_path.read_bytes())  # never half-written
        upload_id = info["ID"]
        data_path = folder / upload_id
        if upload_id in sources and data_path.exists():
            stored = data_path.read_bytes()
            source = sources[upload_id]
            assert len(stored) <= len(source) and stored == source[: len(stored)], upload_id


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    rng = random.Random(20261121)
    server = PytusdProcess(tmp_path / "data", "--verbose=false").start()
    datas = [os.urandom(rng.randint(6 << 20, 14 << 20)) for _ in range(UPLOADS)]
    clients = [Client(server.url, data, seed) for seed, data in enumerate(datas)]
    for client in clients:
        client.start()
    everyone = list(clients)
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(0.02, 0.25))
            server.signal(signal.SIGKILL)
            server.wait(10)
            kills += 1
            sources = {c.url.rsplit("/", 1)[1]: c.data for c in everyone if c.url}
            check_folder(tmp_path / "data", sources)
            server.stop()
            server = PytusdProcess(tmp_path / "data", "--verbose=false", port=server.port).start()
            if all(c.done.is_set() for c in clients):  # everything finished early: start more uploads
                clients = [Client(server.url, os.urandom(rng.randint(6 << 20, 14 << 20)), kills + i)
                           for i in range(UPLOADS)]
                everyone += clients
                for client in clients:
                    client.start()
        for client in clients:
            assert client.done.wait(120), "an upload did not finish after the last crash"
            assert client.error is None, client.error
    finally:
        for client in clients:
            client.stop.set()
        server.stop()
    assert kills >= KILLS
    for client in everyone:
        stored = (tmp_path / "data" / client.url.rsplit("/", 1)[1]).read_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(client.data).digest()
    failures = sum(c.failures for c in everyone)
    print(f"\ncrash test: {kills} SIGKILLs, {len(everyone)} uploads, {failures} broken requests, all byte-exact")
