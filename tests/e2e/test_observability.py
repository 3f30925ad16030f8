"""Metrics, health endpoints and logs of a real ``pytusd`` process; metrics summed over processes."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, read as Prometheus would (text format, exact sample names)."""
    text = httpx.get(base + "/metrics").text
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in /metrics:\n{text}")


def upload(files_url: str, data: bytes, **headers: str) -> str:
    r = httpx.post(files_url, headers={**TUS, "Upload-Length": str(len(data)), **headers})
    assert r.status_code == 201, r.text
    url = r.headers["location"]
    r = httpx.patch(url, headers={**PATCH, "Upload-Offset": "0", **headers}, content=data)
    assert r.status_code == 204, r.text
    return url


def base_of(server) -> str:
    return f"http://127.0.0.1:{server.port}"


def test_metrics_scrape_after_an_upload(pytusd_factory):
    server = pytusd_factory()
    base = base_of(server)
    upload(server.url, b"hello world")
    assert httpx.head(server.url + "nope", headers=TUS).status_code == 404
    text = httpx.get(base + "/metrics").text
    assert "# TYPE tusd_bytes_received counter\ntusd_bytes_received 11.0\n" in text
    assert metric(base, "tusd_uploads_created") == 1
    assert metric(base, "tusd_uploads_finished") == 1
    assert metric(base, "tusd_requests_total", method="POST") == 1
    assert metric(base, "tusd_requests_total", method="PATCH") == 1
    assert metric(base, "tusd_errors_total", code="ERR_UPLOAD_NOT_FOUND", status="404") == 1
    assert metric(base, "pytusd_upload_size_bytes_count") == 1
    assert metric(base, "tusd_hook_invocations_total", hooktype="post-finish") == 0

    # pytusd's server counts open connections, idle ones included (the scrape's own is one of them)
    before = metric(base, "tusd_connections_open")
    assert before >= 1
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        deadline = time.monotonic() + 5
        while metric(base, "tusd_connections_open") != before + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert metric(base, "tusd_connections_open") == before + 1
    finally:
        idle.close()
    deadline = time.monotonic() + 5
    while metric(base, "tusd_connections_open") != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(base, "tusd_connections_open") == before


def test_health_and_ready(pytusd_factory, tmp_path):
    server = pytusd_factory("--metrics-path", "/internal/metrics")
    base = base_of(server)
    r = httpx.get(base + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(base + "/ready")
    assert r.status_code == 200 and r.json()["checks"] == {"store": "ok", "locker": "ok"}
    assert httpx.get(base + "/internal/metrics").status_code == 200
    assert httpx.get(base + "/metrics").status_code == 404
    shutil.rmtree(server.upload_dir)  # the FileStore's and the FileLocker's directory
    r = httpx.get(base + "/ready")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"store": "error: OSError", "locker": "error: OSError"}}
    assert httpx.get(base + "/health").status_code == 200


def test_json_log_lines_carry_request_id_and_upload_id(pytusd_factory):
    server = pytusd_factory("--log-format", "json")
    url = upload(server.url, b"abc", **{"X-Request-ID": "e2e-req-1"})
    upload_id = url.rsplit("/", 1)[1]
    r = httpx.delete(url, headers=TUS)
    made = r.headers["x-request-id"]
    assert len(made) == 32
    deadline = time.monotonic() + 5
    while made not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    mine = [e for e in entries if e.get("request_id") == "e2e-req-1"]
    events = [e.get("event") for e in mine]
    assert events.count("RequestCompleted") == 2 and "UploadCreated" in events and "UploadFinished" in events
    assert all(e["upload_id"] == upload_id for e in mine if e.get("event", "").startswith("Upload"))
    [done] = [e for e in mine if e.get("event") == "RequestCompleted" and e["method"] == "POST"]
    assert done["status"] == 201 and done["upload_id"] == upload_id and done["level"] == "INFO"
    [terminated] = [e for e in entries if e.get("event") == "UploadTerminated"]
    assert terminated["request_id"] == made and terminated["upload_id"] == upload_id


def test_multiprocess_metrics_sum_every_process(pytusd_factory, tmp_path, monkeypatch):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    shared = tmp_path / "shared-data"
    first = pytusd_factory(upload_dir=shared)
    second = pytusd_factory(upload_dir=shared)
    upload(first.url, b"one")
    upload(second.url, b"two!")
    upload(second.url, b"three")
    for server in (first, second):  # each answers for both
        base = base_of(server)
        assert metric(base, "tusd_uploads_created") == 3
        assert metric(base, "tusd_uploads_finished") == 3
        assert metric(base, "tusd_bytes_received") == 12
        assert metric(base, "tusd_requests_total", method="PATCH") == 3
        assert metric(base, "pytusd_upload_size_bytes_count") == 3
    live = sorted(p.name for p in metrics_dir.iterdir() if p.name.startswith("gauge_livesum"))
    assert len(live) == 2
    second.signal(signal.SIGTERM)
    assert second.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    # a stopped process's counts stay in the sums, its live gauges leave them
    assert metric(base_of(first), "tusd_uploads_created") == 3
    assert len([p for p in metrics_dir.iterdir() if p.name.startswith("gauge_livesum")]) == 1


def test_otel_traces_to_the_console(pytusd_factory):
    server = pytusd_factory("--otel-traces", "console")
    upload(server.url, b"abc")
    server.signal(signal.SIGTERM)
    server.wait(15)
    log = server.log()  # the spans still buffered are exported at shutdown
    for name in ("POST /files/", "PATCH /files/{id}", "store.write", "lock.acquire"):
        assert f'"name": "{name}"' in log, name
