"""What an operator sees when a backend cannot be reached, through the real ``pytusd`` command: one log line at
start-up, /ready 503 until the backend is back, 503 with Retry-After for requests meanwhile, never a traceback; and
exit status 2 with one line for a configuration that can never work."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from testbed.services import free_port

from .conftest import mounted_tmpfs

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def base_of(server) -> str:
    return f"http://127.0.0.1:{server.port}"


def lines_with(log: str, *levels: str) -> list[str]:
    return [line for line in log.splitlines() if any(level in line for level in levels)]


def wait_ready(base: str, status: int, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(base + "/ready")
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def run_pytusd(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytusd", "--host", "127.0.0.1", "--port", str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_redis_down_at_start_then_up(pytusd_factory, tmp_path):
    from testbed.services import redis_server

    port = free_port()
    server = pytusd_factory("--locker", "redis", "--redis-url", f"redis://127.0.0.1:{port}/0")
    base = base_of(server)
    problems = lines_with(server.log(), "ERROR", "WARNING")
    assert len(problems) == 1, server.log()
    assert f"127.0.0.1:{port}" in problems[0] and "not ready" in problems[0] and "Redis" in problems[0], problems
    r = httpx.get(base + "/ready")
    assert r.status_code == 503 and r.json()["checks"]["locker"].startswith("error"), r.text

    r = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"})
    assert r.status_code == 201
    url = r.headers["location"]
    r = httpx.patch(url, headers={**PATCH, "Upload-Offset": "0"}, content=b"hello", timeout=30)
    assert r.status_code == 503 and r.text.startswith("ERR_LOCKER_UNAVAILABLE"), r.text
    assert r.headers["retry-after"] == "5"
    r = httpx.head(url, headers=TUS, timeout=30)
    assert r.status_code == 503

    with redis_server(tmp_path / "redis", port=port):
        assert wait_ready(base, 200).status_code == 200
        r = httpx.patch(url, headers={**PATCH, "Upload-Offset": "0"}, content=b"hello", timeout=30)
        assert r.status_code == 204, r.text
    log = server.log()
    assert "Traceback" not in log, log
    failures = [line for line in lines_with(log, "ERROR") if "cannot be reached" in line]
    assert len(failures) == 3, log  # start-up, PATCH, HEAD: one line each


def test_upload_dir_proc_starts_not_ready(pytusd_factory):
    server = pytusd_factory(upload_dir=__import__("pathlib").Path("/proc"))
    warnings = lines_with(server.log(), "WARNING", "ERROR")
    assert len(warnings) == 1 and "/proc cannot take uploads" in warnings[0], server.log()
    r = httpx.get(base_of(server) + "/ready")
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("error: "), r.text


def test_upload_dir_that_is_a_file_exits_2():
    result = run_pytusd("--upload-dir", "/etc/passwd")
    assert result.returncode == 2, result
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1 and "--upload-dir /etc/passwd is a file, not a directory" in output[0], output


@pytest.fixture
def read_only_fs(tmp_path):
    """A tmpfs mounted read-only at tmp_path/ro (skipped where mounting is not permitted, as small_fs is)."""
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as mounted:
        yield mounted


def test_read_only_upload_dir_starts_not_ready_then_recovers(read_only_fs, pytusd_factory):
    mount_point, remount = read_only_fs
    server = pytusd_factory(upload_dir=mount_point)
    warnings = lines_with(server.log(), "WARNING", "ERROR")
    assert len(warnings) == 1 and "cannot take uploads" in warnings[0] and "Read-only" in warnings[0], server.log()
    base = base_of(server)
    assert httpx.get(base + "/ready").status_code == 503
    remount("rw")
    assert wait_ready(base, 200).status_code == 200
    assert os.listdir(mount_point) == []  # the probe file is gone again


def test_hook_server_down_is_one_warning(pytusd_factory):
    port = free_port()
    server = pytusd_factory("--hooks-http", f"http://127.0.0.1:{port}/hooks", "--hooks-enabled-events",
                            "pre-create,post-finish")
    warnings = lines_with(server.log(), "WARNING", "ERROR")
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0] and "pre-create" in warnings[0], server.log()
    assert httpx.get(base_of(server) + "/ready").status_code == 200  # hooks are not a readiness condition


def test_s3_missing_bucket_exits_2(s3_keys):
    result = run_pytusd("--s3-bucket", "pytusd-no-such-bucket", "--s3-endpoint", s3_keys)
    assert result.returncode == 2, result
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1 and "'pytusd-no-such-bucket'" in output[0] and "does not exist" in output[0], output


def test_s3_wrong_credentials_exit_2(s3_keys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    result = run_pytusd("--s3-bucket", "pytusd-any", "--s3-endpoint", s3_keys)
    assert result.returncode == 2, result
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1 and ("refused" in output[0] or "denied" in output[0]), output


def test_s3_endpoint_unreachable_starts_not_ready(s3_keys, pytusd_factory):
    port = free_port()
    server = pytusd_factory("--s3-bucket", "pytusd-any", "--s3-endpoint", f"http://127.0.0.1:{port}")
    # Besides the memory locker's warning for an object store (tests/e2e/test_first_minutes.py): one line.
    problems = [line for line in lines_with(server.log(), "ERROR", "WARNING") if "locker memory" not in line]
    assert len(problems) == 1 and f"127.0.0.1:{port}" in problems[0] and "not ready" in problems[0], server.log()
    base = base_of(server)
    assert httpx.get(base + "/ready").status_code == 503
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"}, timeout=60)
    assert r.status_code == 503 and r.text.startswith("ERR_STORAGE_UNAVAILABLE") and r.headers["retry-after"] == "5"
    assert "Traceback" not in server.log()
