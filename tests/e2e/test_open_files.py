"""pytusd raises its soft limit of open files to the hard limit at start-up (as Go, so tusd, and Node do): each open
upload holds a connection, its data file and its lock file, and the usual soft limit of 1,024 would make uploads
fail with "Too many open files" from about 340 open at once."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RawUpload, free_port, tus_patch_headers

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


def test_many_open_uploads_under_a_low_soft_limit(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit of open files is {hard}")
    port = free_port()
    log = open(tmp_path / "pytusd.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--host", "127.0.0.1", "--port", str(port), "--upload-dir",
         str(tmp_path / "data"), "--verbose=false"],
        stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    opened: list[RawUpload] = []
    try:
        url = f"http://127.0.0.1:{port}/files/"
        for _ in range(200):
            try:
                httpx.get(url.replace("/files/", "/health"))
                break
            except httpx.TransportError:
                time.sleep(0.05)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3] != "256", line
        with httpx.Client() as client:
            for _ in range(150):  # ~450 descriptors in the server: more than 256
                r = client.post(url, headers={**TUS, "Upload-Length": "10"})
                assert r.status_code == 201, r.text
                path = "/files/" + r.headers["location"].rsplit("/", 1)[1]
                raw = RawUpload(port, "PATCH", path, tus_patch_headers(0, 10))
                raw.send(b"01234")
                opened.append(raw)
        for raw in opened:
            raw.send(b"56789")
            status, headers, _ = raw.response()
            assert status == 204 and headers["upload-offset"] == "10"
    finally:
        for raw in opened:
            raw.close()
        proc.terminate()
        proc.wait(15)
        log.close()
