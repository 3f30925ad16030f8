"""Expiration extension (items 41-45): Upload-Expires, 410 for expired uploads, the cleaner."""

from __future__ import annotations

import email.utils
import os
import time

from pytusd import Config, FileStore, MemoryLocker
from pytusd.core.expiration import Cleaner

from tests.conftest import TUS, create, patch


def age(upload_dir, upload_id: str, seconds: float) -> None:
    """Make an upload look untouched for ``seconds``."""
    past = time.time() - seconds
    for name in (upload_id, f"{upload_id}.info"):
        os.utime(upload_dir / name, (past, past))


async def test_expiration_advertised_only_when_configured(client_factory):
    assert "expiration" not in (await client_factory().options("/files/")).headers["tus-extension"]
    assert "expiration" in (await client_factory(expiration=60).options("/files/")).headers["tus-extension"]


async def test_upload_expires_headers(client_factory):
    client = client_factory(expiration=3600)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "4"})
    expires = email.utils.parsedate_to_datetime(r.headers["upload-expires"]).timestamp()
    assert r.headers["upload-expires"].endswith(" GMT")
    assert abs(expires - (time.time() + 3600)) < 5
    r = await patch(client, r.headers["location"], 0, b"ab")
    assert "upload-expires" in r.headers
    r = await patch(client, r.request.url.path, 2, b"cd")
    assert "upload-expires" not in r.headers  # finished uploads do not expire


async def test_expired_upload_is_410_and_removed(client_factory, upload_dir):
    client = client_factory(expiration=60)
    url = await create(client, 10)
    await patch(client, url, 0, b"abc")
    upload_id = url.rsplit("/", 1)[1]
    age(upload_dir, upload_id, 120)
    r = await client.head(url)
    assert r.status_code == 410
    assert not (upload_dir / upload_id).exists() and not (upload_dir / f"{upload_id}.info").exists()
    r = await patch(client, url, 3, b"d")
    assert r.status_code == 410 and r.text.startswith("ERR_UPLOAD_EXPIRED")
    assert (await client.get(url)).status_code == 410


async def test_finished_upload_never_expires(client_factory, upload_dir):
    client = client_factory(expiration=60)
    url = await create(client, 2)
    await patch(client, url, 0, b"ok")
    age(upload_dir, url.rsplit("/", 1)[1], 10_000)
    assert (await client.get(url)).content == b"ok"


async def test_cleaner_removes_expired_but_not_locked_or_fresh_or_finished(tmp_path):
    upload_dir = tmp_path / "data"
    store = FileStore(upload_dir)
    store.ensure_directory()
    locker = MemoryLocker()
    from pytusd.info import UploadInfo

    async def make(size: int, data: bytes) -> str:
        upload = await store.create(UploadInfo(size=size))

        async def body():
            yield data

        if data:
            await upload.write(0, body())
        return (await upload.info()).id

    stale, fresh, finished, busy = await make(5, b"ab"), await make(5, b"ab"), await make(2, b"ok"), await make(5, b"")
    for upload_id in (stale, finished, busy):
        age(upload_dir, upload_id, 120)
    held = await locker.acquire(busy, lambda: None, 1)
    cleaner = Cleaner(store, locker, expiration=60, interval=1)
    assert await cleaner.run_once() == 1
    assert cleaner.removed == 1
    assert not (upload_dir / stale).exists() and (upload_dir / f"{stale}.expired").exists()
    for kept in (fresh, finished, busy):
        assert (upload_dir / f"{kept}.info").exists()
    await held.release()
    assert await cleaner.run_once() == 1  # now that nobody holds it
    # Expired uploads are remembered for a day, then forgotten.
    old = time.time() - 2 * 86400
    os.utime(upload_dir / f"{stale}.expired", (old, old))
    await cleaner.run_once()
    assert not (upload_dir / f"{stale}.expired").exists()


async def test_cleaner_runs_in_the_app(tmp_path):
    import asyncio

    import httpx

    from pytusd import TusApp

    app = TusApp(Config(store=FileStore(tmp_path / "d"), expiration=60, expiration_cleanup_interval=0.05))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        url = await create(client, 5)
        age(tmp_path / "d", url.rsplit("/", 1)[1], 120)
        for _ in range(100):
            if app.cleaner.removed:
                break
            await asyncio.sleep(0.02)
        assert app.cleaner.removed == 1
        app.shutdown()
