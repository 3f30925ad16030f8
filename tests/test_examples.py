"""The examples in examples/ work (in-process, and as the processes their docstrings say to start), and the API
reference builds from the docstrings (scripts/docs), so neither can rot."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from tusclient import client as tus_client

from .conftest import PATCH_TYPE, TUS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load_example(name: str, upload_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import examples/<name>.py afresh; its module-level app stores in ``upload_dir``, not in the working dir."""
    monkeypatch.setenv("UPLOAD_DIR", str(upload_dir))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(args: list[str], cwd: Path, env: dict[str, str], port: int) -> Iterator[str]:
    """Start a server process, wait until it accepts connections, yield its URL, stop it."""
    process = subprocess.Popen(args, cwd=cwd, env={**os.environ, **env, "PORT": str(port)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"{args} exited with {process.returncode}:\n{output}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{args} did not start listening on {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- examples/fastapi_app.py ------------------------------------------------------------------------------------


async def test_fastapi_example_authenticates_and_keeps_users_apart(tmp_path, monkeypatch):
    example = load_example("fastapi_app", tmp_path / "default", monkeypatch)
    app = example.create_app(tmp_path / "uploads", {"a": "alice", "b": "bob"})
    alice = {**TUS, "Authorization": "Bearer a"}
    bob = {**TUS, "Authorization": "Bearer b"}
    async with client_for(app) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
        assert r.status_code == 401 and not (tmp_path / "uploads" / "alice").exists()
        r = await client.post("/files/", headers={**alice, "Upload-Length": "5",
                                                  "Upload-Metadata": "filename YS50eHQ="})
        assert r.status_code == 201
        url = r.headers["location"]
        upload_id = url.split("/files/", 1)[1]
        assert upload_id.startswith("alice/")
        # A client without PATCH sends POST with X-HTTP-Method-Override (MethodOverrideMiddleware).
        r = await client.post(url, headers={**alice, **PATCH_TYPE, "Upload-Offset": "0",
                                            "X-HTTP-Method-Override": "PATCH"}, content=b"hello")
        assert r.status_code == 204 and r.headers["upload-offset"] == "5"
        stored = tmp_path / "uploads" / upload_id
        assert stored.read_bytes() == b"hello"
        # Bob cannot see, read, append to or delete Alice's upload.
        assert (await client.head(url, headers=bob)).status_code == 404
        assert (await client.get(url, headers=bob)).status_code == 404
        assert (await client.delete(url, headers=bob)).status_code == 404
        assert (await client.get(url, headers=alice)).content == b"hello"
        head = await client.head(url, headers=alice)
        assert head.headers["upload-metadata"] == "filename YS50eHQ=,owner YWxpY2U="
        assert (await client.get("/me/uploads", headers=alice)).json() == [upload_id]
        assert (await client.get("/me/uploads", headers=bob)).json() == []
        # Preflight needs no credentials.
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"}
        r = await client.options(url, headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = await client.post("/files/", headers={**bob, "Upload-Length": str(200 * 1024 * 1024)})
        assert r.status_code == 413 and r.text == "at most 100 MB per upload\n"
        stats = (await client.get("/stats")).json()
        assert stats == {"uploads_created": 1, "uploads_finished": 1, "bytes_received": 5,
                         "errors": {"ERR_UPLOAD_REJECTED": 1}}
        assert (await client.delete(url, headers=alice)).status_code == 204
        assert not stored.exists()


def test_fastapi_example_runs_as_a_script_for_tuspy(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(300_000))
    env = {"UPLOAD_DIR": str(tmp_path / "uploads")}
    with running([sys.executable, str(EXAMPLES / "fastapi_app.py")], tmp_path, env, free_port()) as url:
        client = tus_client.TusClient(url + "/files/", headers={"Authorization": "Bearer alice-token"})
        uploader = client.uploader(file_path=str(source), chunk_size=100_000, metadata={"filename": "source.bin"})
        uploader.upload()
        assert "/files/alice/" in uploader.url
        stored = tmp_path / "uploads" / uploader.url.split("/files/", 1)[1]
        assert stored.read_bytes() == source.read_bytes()
        assert httpx.post(url + "/files/", headers={**TUS, "Upload-Length": "1"}).status_code == 401


# -- examples/starlette_postprocess.py --------------------------------------------------------------------------


async def test_starlette_example_hashes_completed_uploads(tmp_path, monkeypatch):
    example = load_example("starlette_postprocess", tmp_path / "default", monkeypatch)
    app = example.create_app(tmp_path / "uploads")
    data = os.urandom(70_000)
    async with app.router.lifespan_context(app), client_for(app) as client:
        r = await client.post("/uploads/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                                          "Upload-Metadata": "filename ZGF0YS5iaW4="})
        assert r.status_code == 201
        url = r.headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        assert (await client.get(f"/checksums/{upload_id}")).status_code == 202  # not finished yet
        await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=data[:30_000])
        await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "30000"}, content=data[30_000:])
        for _ in range(200):
            r = await client.get(f"/checksums/{upload_id}")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert r.json() == {"id": upload_id, "sha256": hashlib.sha256(data).hexdigest()}
        sidecar = tmp_path / "uploads" / f"{upload_id}.sha256"
        assert sidecar.read_text() == f"{hashlib.sha256(data).hexdigest()}  data.bin\n"
        assert (await client.delete(url, headers=TUS)).status_code == 204
        for _ in range(200):
            if not sidecar.exists():
                break
            await asyncio.sleep(0.01)
        assert not sidecar.exists()
        assert (await client.get("/checksums/nope")).status_code == 404


def test_starlette_example_runs_under_uvicorn(tmp_path):
    env = {"UPLOAD_DIR": str(tmp_path / "uploads")}
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "starlette_postprocess:app",
            "--port", str(port)]
    with running(args, tmp_path, env, port) as url:
        r = httpx.post(url + "/uploads/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "3"}, content=b"abc")
        assert r.status_code == 201
        upload_id = r.headers["location"].rsplit("/", 1)[1]
        for _ in range(200):
            r = httpx.get(f"{url}/checksums/{upload_id}")
            if r.status_code == 200:
                break
            time.sleep(0.02)
        assert r.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()


# -- examples/django_project ------------------------------------------------------------------------------------


def test_django_example_serves_uploads_next_to_django(tmp_path):
    pytest.importorskip("django")
    project = EXAMPLES / "django_project"
    check = subprocess.run([sys.executable, "manage.py", "check"], cwd=project, capture_output=True, text=True,
                           env={**os.environ, "UPLOAD_DIR": str(tmp_path / "uploads")})
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "mysite.asgi:application", "--port", str(port)]
    with running(args, project, {"UPLOAD_DIR": str(tmp_path / "uploads")}, port) as url:
        r = httpx.get(url + "/")
        assert r.status_code == 200 and r.text.startswith("Django here")
        r = httpx.post(url + "/files/", headers={**TUS, "Upload-Length": "11", "Upload-Metadata": "filename YS50eHQ="})
        assert r.status_code == 201 and r.headers["location"].startswith(url + "/files/")
        upload = r.headers["location"]
        r = httpx.patch(upload, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=b"hello world")
        assert r.status_code == 204 and r.headers["upload-offset"] == "11"
        assert httpx.get(upload).content == b"hello world"
        assert httpx.options(url + "/files/").headers["tus-version"] == "1.0.0"
        stats = httpx.get(url + "/uploads/stats").json()
        assert stats["uploads_finished"] == 1 and stats["bytes_received"] == 11 and stats["requests"]["PATCH"] == 1
        assert httpx.get(url + "/nothing-here").status_code == 404  # Django's 404
    assert (tmp_path / "uploads" / (upload.rsplit("/", 1)[1])).read_bytes() == b"hello world"


# -- the API reference ------------------------------------------------------------------------------------------


def test_api_reference_builds_from_the_docstrings(tmp_path):
    pytest.importorskip("pdoc")
    out = tmp_path / "api"
    result = subprocess.run([str(ROOT / "scripts" / "docs"), str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Error importing" not in result.stderr, result.stderr
    main = (out / "pytusd.html").read_text()
    for name in ("TusApp", "Config", "Events", "Subscription", "UploadEvent", "Endpoints",
                 "MethodOverrideMiddleware", "MetricsSnapshot", "HookResponse", "DataStore", "Locker"):
        assert f'id="{name}"' in main or f">{name}<" in main, name
    events = (out / "pytusd" / "core" / "events.html").read_text()
    assert "CompleteUploads" in events and "dropped" in events
    assert "PreUploadCreateCallback" in (out / "pytusd" / "core" / "config.html").read_text()
    assert (out / "pytusd" / "asgi" / "routing.html").exists()
    assert (out / "pytusd" / "observe" / "metrics.html").exists()
    assert (out / "index.html").exists() and (out / "search.js").exists()
