"""``--digest`` on every store (the contract suite's stores, on their real backends): the whole-upload digest is
computed while the bytes arrive, carried across requests served by new store objects (another process), kept out of
it what a store did not keep, and sent as ``Repr-Digest`` on HEAD and GET."""

from __future__ import annotations

import base64
import hashlib
import os

import httpx
import pytest

from pytusd import Config, TusApp
from pytusd.core import digests
from pytusd.stores import base, capabilities
from tests.unit.stores.test_base import BUILDERS, MIB, _checksum_header

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def _client(store, algorithms="sha256") -> httpx.AsyncClient:
    app = TusApp(Config(store=store, digest=algorithms))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")


def _field(data: bytes, *algorithms: str) -> str:
    names = {"sha256": "sha-256", "sha512": "sha-512"}
    return ", ".join(
        f"{names[a]}=:{base64.b64encode(hashlib.new(a, data).digest()).decode()}:" for a in algorithms
    )


async def _create(store, size: int, **headers: str) -> str:
    async with _client(store) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": str(size), **headers})
        assert r.status_code == 201, r.text
        return r.headers["location"]


async def _patch(store, url: str, offset: int, data: bytes, algorithms="sha256", **headers: str) -> httpx.Response:
    async with _client(store, algorithms) as client:
        return await client.patch(url, content=data, headers={**PATCH, "Upload-Offset": str(offset), **headers})


async def _upload_id(url: str) -> str:
    return url.rsplit("/", 1)[-1]


async def test_digest_across_requests_and_processes(make_store):
    """Three PATCHes, each through a new store object and app (another process each time): HEAD, GET and a ranged
    GET carry the digest of the whole content; the info holds it and no running state is left behind."""
    data = os.urandom(11 * MIB + 7)
    cuts = [0, 6 * MIB + 1, 6 * MIB + 1000, len(data)]
    url = await _create(make_store(), len(data))
    for start, end in zip(cuts, cuts[1:]):
        r = await _patch(make_store(), url, start, data[start:end], "sha256,sha512")
        assert r.status_code == 204 and r.headers["upload-offset"] == str(end)
        if end < len(data):
            assert "repr-digest" not in r.headers
    expected = _field(data, "sha256", "sha512")
    async with _client(make_store(), "sha256,sha512") as client:
        head = await client.head(url, headers=TUS)
        assert head.headers["repr-digest"] == expected
        r = await client.get(url, headers=TUS)
        assert r.content == data and r.headers["repr-digest"] == expected
        r = await client.get(url, headers={**TUS, "Range": "bytes=10-99"})
        assert r.status_code == 206 and r.content == data[10:100] and r.headers["repr-digest"] == expected
    info = await (await make_store().get(await _upload_id(url))).info()
    assert info.storage[digests.DIGEST_KEY] == expected
    assert digests.STATE_KEY not in info.storage


async def test_the_state_is_saved_after_each_write(make_store):
    """Between requests the running state is in the upload's info, for exactly the stored offset."""
    import json

    data = os.urandom(3 * MIB)
    url = await _create(make_store(), len(data))
    r = await _patch(make_store(), url, 0, data[: MIB + 5])
    assert r.status_code == 204
    info = await (await make_store().get(await _upload_id(url))).info()
    assert json.loads(info.storage[digests.STATE_KEY])["offset"] == MIB + 5 == info.offset
    assert digests.DIGEST_KEY not in info.storage


async def test_a_lost_state_is_caught_up(make_store):
    """A process that stored bytes and died before saving the state (here: the state removed after the write) is
    caught up by the next writer, by reading back the range, or, where an unfinished upload cannot be read, by
    reading the finished upload once: the digest is right either way."""
    data = os.urandom(7 * MIB + 3)
    first = 5 * MIB + 11
    url = await _create(make_store(), len(data))
    assert (await _patch(make_store(), url, 0, data[:first])).status_code == 204
    upload = await make_store().get(await _upload_id(url))
    await base.annotatable(upload).annotate({digests.STATE_KEY: None})
    assert (await _patch(make_store(), url, first, data[first:])).status_code == 204
    async with _client(make_store()) as client:
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == _field(data, "sha256")


async def test_a_state_behind_the_offset_is_caught_up_from_where_it_stops(make_store):
    """A saved state that covers fewer bytes than are stored (bytes stored, the newer state not saved) is resumed
    and the gap read back, not the whole upload."""
    data = os.urandom(4 * MIB + 9)
    url = await _create(make_store(), len(data))
    assert (await _patch(make_store(), url, 0, data[:MIB])).status_code == 204
    upload_id = await _upload_id(url)
    older = (await (await make_store().get(upload_id)).info()).storage[digests.STATE_KEY]
    assert (await _patch(make_store(), url, MIB, data[MIB : 2 * MIB])).status_code == 204
    await base.annotatable(await make_store().get(upload_id)).annotate({digests.STATE_KEY: older})
    assert (await _patch(make_store(), url, 2 * MIB, data[2 * MIB :])).status_code == 204
    async with _client(make_store()) as client:
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == _field(data, "sha256")


async def test_a_refused_chunk_is_not_in_the_digest(make_store):
    """A chunk refused for its checksum (460) was hashed on its way but is not stored: it must not be in the
    digest, and the accepted retry is."""
    store = make_store()
    if not capabilities(store).write_verified:
        pytest.skip("the store has no verified writes")
    data = os.urandom(2 * MIB + 1)
    url = await _create(store, len(data))
    bad = bytearray(data)
    bad[-1] ^= 1
    r = await _patch(make_store(), url, 0, bytes(bad), **{"Upload-Checksum": _checksum_header("sha1", data)})
    assert r.status_code == 460
    r = await _patch(make_store(), url, 0, data, **{"Upload-Checksum": _checksum_header("sha1", data)})
    assert r.status_code == 204
    async with _client(make_store()) as client:
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == _field(data, "sha256")


async def test_a_final_upload_gets_the_digest_of_its_partials(make_store):
    store = make_store()
    if not capabilities(store).concat:
        pytest.skip("the store has no concatenation")
    parts = [os.urandom(6 * MIB + 1), os.urandom(1000)]
    urls = []
    for part in parts:
        url = await _create(make_store(), len(part), **{"Upload-Concat": "partial"})
        assert (await _patch(make_store(), url, 0, part)).status_code == 204
        urls.append(url)
    async with _client(make_store()) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls)})
        assert r.status_code == 201
        final = r.headers["location"]
        assert (await client.head(final, headers=TUS)).headers["repr-digest"] == _field(b"".join(parts), "sha256")
        assert (await client.head(urls[1], headers=TUS)).headers["repr-digest"] == _field(parts[1], "sha256")


async def test_an_empty_upload_and_a_deferred_length(make_store):
    async with _client(make_store()) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "0"})
        assert r.status_code == 201, r.text
        assert (await client.head(r.headers["location"], headers=TUS)).headers["repr-digest"] == _field(b"", "sha256")
        if not capabilities(make_store()).declare_length:
            return
        data = os.urandom(MIB + 3)
        r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
        url = r.headers["location"]
        assert (await client.patch(url, content=data[:MIB], headers={**PATCH, "Upload-Offset": "0"})).status_code == 204
        r = await client.patch(url, content=data[MIB:], headers={
            **PATCH, "Upload-Offset": str(MIB), "Upload-Length": str(len(data))})
        assert r.status_code == 204
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == _field(data, "sha256")


def test_every_builtin_store_can_carry_the_digest():
    assert sorted(BUILDERS)  # the stores above
    from pytusd import FileStore
    from pytusd.stores.azure import AzureStore
    from pytusd.stores.gcs import GCSStore
    from pytusd.stores.s3 import S3Store

    for store_class in (FileStore, S3Store, AzureStore, GCSStore):
        assert store_class.capabilities.annotate, store_class
