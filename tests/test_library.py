"""pytusd as a library: composition (a store written by a user, capabilities and switches), the public API
(importable from pytusd, typed). Event streams and callbacks are in tests/unit/core/test_events.py, self-routed
endpoints in tests/unit/asgi/test_routing.py, the in-process metrics snapshot in tests/unit/observe/test_metrics.py.

The counterparts of tusd's handler package (Config, StoreComposer, UnroutedHandler, the notification channels,
PreUploadCreateCallback / PreFinishResponseCallback, Metrics), driven in-process through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import pytusd
from pytusd import Config, FileLocker, FileStore, MemoryLocker, TusApp, UploadEvent, UploadInfo
from pytusd.errors import ERR_UPLOAD_NOT_FOUND

from .conftest import PATCH_TYPE, TUS, create, patch


ROOT = Path(__file__).resolve().parent.parent


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")


async def next_event(subscription: pytusd.Subscription, timeout: float = 2.0) -> UploadEvent:
    return await asyncio.wait_for(subscription.get(), timeout)


# -- a store written by a user: the core protocol only -----------------------------------------------------------


class MemoryUpload:
    def __init__(self, info: UploadInfo) -> None:
        self._info = info
        self.data = bytearray()
        self.finished = False

    async def info(self) -> UploadInfo:
        return self._info.replace(offset=len(self.data))

    async def write(self, offset: int, chunks: AsyncIterable[bytes]) -> int:
        assert offset == len(self.data)
        written = 0
        async for chunk in chunks:
            self.data += chunk
            written += len(chunk)
        return written

    async def reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        yield bytes(self.data[start:end])

    async def finish(self) -> None:
        self.finished = True


class MemoryStore:
    """Nothing but create and get: no termination, concatenation, deferred length, checksums or expiration."""

    def __init__(self) -> None:
        self.uploads: dict[str, MemoryUpload] = {}

    async def create(self, info: UploadInfo) -> MemoryUpload:
        upload_id = info.id or secrets.token_hex(8)
        upload = MemoryUpload(info.replace(id=upload_id))
        self.uploads[upload_id] = upload
        return upload

    async def get(self, upload_id: str) -> MemoryUpload:
        try:
            return self.uploads[upload_id]
        except KeyError:
            raise ERR_UPLOAD_NOT_FOUND() from None


@pytest.mark.parametrize("locker", ["memory", "file"])
async def test_user_store_with_only_the_core_protocol(tmp_path, locker):
    store = MemoryStore()
    assert isinstance(store, pytusd.DataStore)
    assert pytusd.stores.capabilities(store) == pytusd.Capabilities()  # declares nothing: nothing optional
    (tmp_path / "locks").mkdir()  # FileLocker never creates folders itself (IDs come from URLs)
    chosen = MemoryLocker() if locker == "memory" else FileLocker(tmp_path / "locks")
    app = TusApp(Config(store=store, locker=chosen))
    async with client_for(app) as client:
        r = await client.options("/files/")
        assert r.headers["tus-extension"] == "creation,creation-with-upload"
        assert "tus-checksum-algorithm" not in r.headers
        url = await create(client, 11, **{"Upload-Metadata": "filename aGkudHh0"})
        assert (await patch(client, url, 0, b"hello ")).headers["upload-offset"] == "6"
        r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "3"}, content=b"abc")
        assert r.status_code == 201 and r.headers["upload-offset"] == "3"
        assert (await patch(client, url, 6, b"world")).status_code == 204
        head = await client.head(url, headers=TUS)
        assert head.headers["upload-offset"] == "11" and head.headers["upload-metadata"] == "filename aGkudHh0"
        assert (await client.get(url)).content == b"hello world"
        assert store.uploads[url.rsplit("/", 1)[1]].finished
        # What the store cannot do is refused, not attempted.
        r = await client.delete(url, headers=TUS)
        assert r.status_code == 405 and "DELETE" not in r.headers["allow"]
        r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
        assert r.status_code == 501 and "creation-defer-length" not in r.text
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": "partial"})
        assert r.status_code == 400 and "ERR_CONCATENATION_UNSUPPORTED" in r.text


async def test_store_capabilities_and_switches_shape_the_extensions(tmp_path):
    app = TusApp(Config(store=FileStore(tmp_path), locker=FileLocker(tmp_path), disable_termination=True,
                        disable_concatenation=True))
    async with client_for(app) as client:
        extensions = (await client.options("/files/")).headers["tus-extension"].split(",")
    assert "termination" not in extensions and "concatenation" not in extensions
    assert {"creation", "creation-with-upload", "creation-defer-length", "checksum"} <= set(extensions)


# -- the public API: importable and typed -----------------------------------------------------------------------


def test_everything_is_importable_from_pytusd():
    for name in pytusd.__all__:
        assert getattr(pytusd, name) is not None, name
    for name in ("RedisLocker", "AzureStore", "GCSStore"):  # optional dependencies, imported on first use
        assert name not in pytusd.__all__ and isinstance(getattr(pytusd, name), type)
    assert (Path(pytusd.__file__).parent / "py.typed").exists()
    code = ("import sys, pytusd; from pytusd import *; "
            "print(sorted({'redis', 'boto3', 'azure', 'grpc'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_package_passes_mypy_strict():
    """The whole package, with the [tool.mypy] settings of pyproject.toml (the generated hook_pb2 modules left out)."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", "src/pytusd"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
