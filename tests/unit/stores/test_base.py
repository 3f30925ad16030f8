"""The store contract: what every store must do, run against each store on its real backend.

Adding a store means adding a builder to ``BUILDERS`` and passing this file. A builder gets the pytest request and a
temporary folder and returns a function that makes a *new* store object on the same backend each time it is called
(a new object stands for a restarted or another process: nothing may be remembered in the old one), plus a
clean-up. For a capability a store lacks (termination, concatenation, deferred length) the test checks instead that
the app does not advertise it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pytusd import Config, TusApp, errors
from pytusd.info import UploadInfo
from pytusd.stores import (
    Annotatable,
    Capabilities,
    Concatenatable,
    Expirable,
    Expiring,
    LengthDeferrable,
    ReadPreparing,
    Reclaiming,
    Terminatable,
    Timestamped,
    Verifiable,
    capabilities,
)

MIB = 1 << 20
# Larger than S3's 5 MiB minimum part, so that stores working in parts or blocks cut it into several.
SIZE = 11 * MIB + 7

Builder = Callable[[pytest.FixtureRequest, Any], tuple[Callable[[], Any], Callable[[], None]]]


def build_file(request, tmp_path):
    from pytusd import FileStore

    return (lambda: FileStore(tmp_path / "data")), (lambda: None)


def build_file_threads(request, tmp_path):
    from pytusd import FileStore

    return (lambda: FileStore(tmp_path / "data", file_io="threads")), (lambda: None)


def build_s3(request, tmp_path, readable_uploads=False):
    from pytusd.stores.s3 import S3Store, make_client
    from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY

    endpoint = request.getfixturevalue("s3_endpoint")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    client = make_client(endpoint=endpoint)
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)

    def cleanup() -> None:
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)

    def make() -> S3Store:
        return S3Store(bucket, make_client(endpoint=endpoint), part_size=5 * MIB, min_part_size=5 * MIB,
                       readable_uploads=readable_uploads)

    return make, cleanup


def build_azure(request, tmp_path):
    from tests.unit.stores.test_azure import contract_builder

    return contract_builder(request, tmp_path)


def build_azure_next(request, tmp_path):
    from tests.unit.stores.test_azure import contract_builder

    return contract_builder(request, tmp_path, "azure_next_endpoint")


def build_gcs(request, tmp_path):
    from tests.unit.stores.test_gcs import contract_builder

    return contract_builder(request, tmp_path)


def build_s3_readable(request, tmp_path):
    return build_s3(request, tmp_path, readable_uploads=True)


BUILDERS: dict[str, Builder] = {
    "file": build_file, "file-threads": build_file_threads, "s3": build_s3, "s3-readable": build_s3_readable,
    "azure": build_azure, "azure-next": build_azure_next, "gcs": build_gcs,
}


async def chunks_of(data: bytes, size: int = MIB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(upload, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([block async for block in upload.reader(start, end)])


async def test_write_resume_in_a_new_process_finish_and_read_back(make_store):
    data = os.urandom(SIZE)
    store = make_store()
    upload = await store.create(UploadInfo(size=SIZE, metadata={"filename": "a.bin", "filetype": "text/plain"}))
    info = await upload.info()
    assert info.id and info.offset == 0 and info.size == SIZE and info.metadata["filename"] == "a.bin"
    assert await upload.write(0, chunks_of(data[: 6 * MIB + 3])) == 6 * MIB + 3

    resumed = await make_store().get(info.id)
    state = await resumed.info()
    assert state.offset == 6 * MIB + 3 and state.size == SIZE and state.metadata == info.metadata
    assert await resumed.write(state.offset, chunks_of(data[state.offset :])) == SIZE - state.offset
    assert (await resumed.info()).is_complete
    await resumed.finish()

    done = await make_store().get(info.id)
    assert (await done.info()).offset == SIZE
    assert await read_all(done) == data
    assert await read_all(done, 5 * MIB - 10, 5 * MIB + 10) == data[5 * MIB - 10 : 5 * MIB + 10]


async def test_an_unfinished_upload_reads_back_what_is_stored(make_store):
    """GET of an unfinished upload (a store that declares readable_while_incomplete): the bytes stored so far, in
    whole and in ranges that cross piece and tail boundaries, as another store object (another process) reads them,
    also through the app with a Range header, and after a short write; a store that cannot says so with 400
    ERR_INCOMPLETE_UPLOAD."""
    store = make_store()
    data = os.urandom(SIZE)
    upload = await store.create(UploadInfo(size=SIZE))
    upload_id = (await upload.info()).id
    stored = 6 * MIB + 3  # on S3: one 5 MiB part and a tail of 1 MiB + 3
    await upload.write(0, chunks_of(data[: stored - 5]))
    await (await make_store().get(upload_id)).write(stored - 5, chunks_of(data[stored - 5 : stored]))
    tus = {"Tus-Resumable": "1.0.0"}
    async with _checksum_app_client(make_store()) as client:
        r = await client.get(f"/files/{upload_id}", headers=tus)
        if not capabilities(store).readable_while_incomplete:
            assert r.status_code == 400 and r.text.startswith("ERR_INCOMPLETE_UPLOAD")
            return
        assert r.status_code == 200 and r.content == data[:stored]
        r = await client.get(f"/files/{upload_id}", headers={**tus, "Range": f"bytes={5 * MIB - 4}-{5 * MIB + 4}"})
        assert r.status_code == 206 and r.content == data[5 * MIB - 4 : 5 * MIB + 5]
        assert r.headers["content-range"] == f"bytes {5 * MIB - 4}-{5 * MIB + 4}/{stored}"
    reader = await make_store().get(upload_id)
    assert await read_all(reader) == data[:stored]
    for start, end in [(0, 10), (5 * MIB - 10, 5 * MIB + 10), (5 * MIB, stored), (stored - 1, stored), (7, 5 * MIB)]:
        assert await read_all(reader, start, end) == data[start:end], (start, end)
    # A short write (a short piece, or bytes that wait in a tail object), read by yet another process.
    short = stored + 1000
    assert await reader.write(stored, chunks_of(data[stored:short])) == 1000
    reader = await make_store().get(upload_id)
    assert await read_all(reader) == data[:short]
    assert await read_all(reader, stored - 3, short) == data[stored - 3 : short]
    # The rest arrives; what was read stays the same, and the finished upload reads back whole.
    await reader.write(short, chunks_of(data[short:]))
    assert await read_all(await make_store().get(upload_id), 0, short) == data[:short]
    await reader.finish()
    assert await read_all(await make_store().get(upload_id)) == data


async def test_many_small_writes(make_store):
    data = os.urandom(300_000)
    store = make_store()
    upload = await store.create(UploadInfo(size=len(data)))
    upload_id = (await upload.info()).id
    for offset in range(0, len(data), 100_000):
        upload = await make_store().get(upload_id)
        assert (await upload.info()).offset == offset
        await upload.write(offset, chunks_of(data[offset : offset + 100_000], 4096))
    await upload.finish()
    assert await read_all(await make_store().get(upload_id)) == data


async def test_a_body_that_breaks_keeps_what_arrived(make_store):
    data = os.urandom(2 * MIB)
    store = make_store()
    upload = await store.create(UploadInfo(size=len(data)))
    upload_id = (await upload.info()).id

    async def broken():
        yield data[:MIB]
        raise errors.ERR_UNEXPECTED_EOF()

    with pytest.raises(errors.TusError):
        await upload.write(0, broken())
    again = await make_store().get(upload_id)
    assert (await again.info()).offset == MIB
    await again.write(MIB, chunks_of(data[MIB:]))
    await again.finish()
    assert await read_all(await make_store().get(upload_id)) == data


async def test_deferred_length(make_store):
    store = make_store()
    if not capabilities(store).declare_length:  # then it must not be advertised
        assert "creation-defer-length" not in TusApp(Config(store=store)).handlers.extensions.split(",")
        return
    data = os.urandom(6 * MIB + 5)
    upload = await store.create(UploadInfo(size_is_deferred=True))
    upload_id = (await upload.info()).id
    await upload.write(0, chunks_of(data))
    later = await make_store().get(upload_id)
    assert (await later.info()).size_is_deferred and (await later.info()).offset == len(data)
    assert isinstance(later, LengthDeferrable)
    await later.declare_length(len(data))
    assert (await later.info()).is_complete
    await later.finish()
    final = await make_store().get(upload_id)
    assert not (await final.info()).size_is_deferred
    assert await read_all(final) == data


async def test_empty_upload(make_store):
    store = make_store()
    upload = await store.create(UploadInfo(size=0))
    await upload.finish()
    assert await read_all(await make_store().get((await upload.info()).id)) == b""


async def test_terminate(make_store):
    store = make_store()
    if not capabilities(store).terminate:  # then it must not be advertised
        assert "termination" not in TusApp(Config(store=store)).handlers.extensions.split(",")
        return
    upload = await store.create(UploadInfo(size=10))
    upload_id = (await upload.info()).id
    await upload.write(0, chunks_of(b"12345"))
    assert isinstance(upload, Terminatable)
    await upload.terminate()
    with pytest.raises(errors.TusError) as info:
        await make_store().get(upload_id)
    assert info.value.status == 404


async def test_unknown_id_is_not_found(make_store):
    with pytest.raises(errors.TusError) as info:
        await make_store().get("0123456789abcdef0123456789abcdef")
    assert info.value.status == 404


@pytest.mark.parametrize("sizes", [(6 * MIB, 5 * MIB + 1), (1000, 0, 2000)], ids=["large", "small"])
async def test_concatenation(make_store, sizes):
    store = make_store()
    if not capabilities(store).concat:  # then it must not be advertised
        assert "concatenation" not in TusApp(Config(store=store)).handlers.extensions.split(",")
        return
    datas = [os.urandom(n) for n in sizes]
    partials = []
    for data in datas:
        partial = await store.create(UploadInfo(size=len(data), is_partial=True))
        await partial.write(0, chunks_of(data))
        await partial.finish()
        partials.append(await make_store().get((await partial.info()).id))
    final = await store.create(UploadInfo(size=sum(sizes), is_final=True, partial_uploads=()))
    assert isinstance(final, Concatenatable)
    await final.concat(partials)
    assert (await final.info()).is_complete
    await final.finish()
    assert await read_all(await make_store().get((await final.info()).id)) == b"".join(datas)


async def test_listing(make_store):
    """Every store can enumerate its uploads (``pytusd list``, ``pytusd info``)."""
    from pytusd.server.admin import list_uploads
    from pytusd.stores import Listable

    store = make_store()
    assert isinstance(store, Listable)
    ids = {(await (await store.create(UploadInfo(size=n, metadata={"filename": f"{n}.txt"}))).info()).id for n in (3, 4)}
    listed = [upload_id async for upload_id in make_store().upload_ids()]
    assert ids <= set(listed)
    rows = await list_uploads(Config(store=make_store()))
    assert {row["id"] for row in rows if row["id"] in ids} == ids
    assert {row["filename"] for row in rows if row["id"] in ids} == {"3.txt", "4.txt"}


# What each capability flag promises: the upload-side protocol its uploads implement.
PROMISES: dict[str, type] = {
    "terminate": Terminatable,
    "declare_length": LengthDeferrable,
    "concat": Concatenatable,
    "write_verified": Verifiable,
    "expire": Expirable,
    "modified_time": Timestamped,
    "annotate": Annotatable,
    "prepare_read": ReadPreparing,
}


async def test_declared_capabilities_match_the_uploads(make_store):
    """A store's declared capabilities are exactly what its uploads implement: a flag set promises the upload-side
    protocol, a flag unset means the upload has none of it (else a capability would go unused, or be called on an
    upload that lacks it); ``expire`` also promises an Expiring store, ``reclaim`` exactly a Reclaiming one."""
    store = make_store()
    declared = capabilities(store)
    assert isinstance(getattr(store, "capabilities", None), Capabilities)  # every store of ours declares
    upload = await store.create(UploadInfo(size=3))
    for reopened in (upload, await make_store().get((await upload.info()).id)):
        for flag, protocol in PROMISES.items():
            assert isinstance(reopened, protocol) == getattr(declared, flag), (flag, type(reopened).__name__)
    if declared.expire:
        assert isinstance(store, Expiring)
    assert isinstance(store, Reclaiming) == declared.reclaim
    extensions = TusApp(Config(store=store)).handlers.extensions.split(",")
    assert ("termination" in extensions) == declared.terminate
    assert ("concatenation" in extensions) == declared.concat
    assert ("creation-defer-length" in extensions) == declared.declare_length
    assert ("checksum" in extensions) == declared.write_verified


async def test_a_data_store_alone_advertises_nothing_optional():
    """A store that declares no ``capabilities`` (a user's, implementing just DataStore) offers nothing optional."""
    from tests.test_library import MemoryStore

    store = MemoryStore()
    assert capabilities(store) == Capabilities()
    assert not any(getattr(capabilities(store), flag) for flag in PROMISES)
    assert capabilities(store).readable_while_incomplete  # the core behaviour: what is stored can be read
    assert TusApp(Config(store=store)).handlers.extensions == "creation,creation-with-upload"
    upload = await store.create(UploadInfo(size=3))
    assert not any(isinstance(upload, protocol) for protocol in PROMISES.values())


# --- checksum: a chunk is kept only when it is verified (Verifiable) -----------------------------------------------


def _checksum_header(algorithm: str, data: bytes) -> str:
    import base64
    import hashlib
    import zlib

    raw = zlib.crc32(data).to_bytes(4, "big") if algorithm == "crc32" else hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(raw).decode()}"


def _checksum_app_client(store):
    import httpx

    app = TusApp(Config(store=store))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_checksum_keeps_a_match_and_refuses_a_mismatch(make_store, algorithm):
    """Through the app: a chunk whose Upload-Checksum matches is stored, one that does not is 460 and not counted,
    as a new store object (another process) sees it; the stored bytes read back exactly."""
    store = make_store()
    if not capabilities(store).write_verified:  # then it must not be advertised
        assert "checksum" not in TusApp(Config(store=store)).handlers.extensions.split(",")
        return
    tus = {"Tus-Resumable": "1.0.0"}
    patch_headers = {**tus, "Content-Type": "application/offset+octet-stream"}
    data = os.urandom(SIZE)
    first = 6 * MIB + 3
    async with _checksum_app_client(store) as client:
        r = await client.post("/files/", headers={**tus, "Upload-Length": str(SIZE)})
        assert r.status_code == 201
        url = r.headers["location"]
        r = await client.patch(url, content=data[:first], headers={
            **patch_headers, "Upload-Offset": "0", "Upload-Checksum": _checksum_header(algorithm, data[:first])})
        assert r.status_code == 204 and r.headers["upload-offset"] == str(first)
        bad = bytearray(data[first:])
        bad[-1] ^= 1
        r = await client.patch(url, content=bytes(bad), headers={
            **patch_headers, "Upload-Offset": str(first), "Upload-Checksum": _checksum_header(algorithm, data[first:])})
        assert r.status_code == 460 and r.text.startswith("ERR_CHECKSUM_MISMATCH")
    async with _checksum_app_client(make_store()) as other:
        assert (await other.head(url, headers=tus)).headers["upload-offset"] == str(first)
        r = await other.patch(url, content=data[first:], headers={
            **patch_headers, "Upload-Offset": str(first), "Upload-Checksum": _checksum_header(algorithm, data[first:])})
        assert r.status_code == 204 and r.headers["upload-offset"] == str(SIZE)
        r = await other.get(url, headers=tus)
        assert r.status_code == 200 and r.content == data


async def test_verified_write_reads_the_chunk_back_before_the_decision(make_store):
    """What checksum-trailer does: ``verify`` reads the chunk back through the upload's reader (the digest is only
    known at the end); a refused chunk is not counted, an accepted one is, the bytes before it unchanged."""
    import hashlib

    store = make_store()
    if not capabilities(store).write_verified:
        return
    data = os.urandom(SIZE)
    upload = await store.create(UploadInfo(size=SIZE))
    upload_id = (await upload.info()).id
    first = 5 * MIB + 11
    assert isinstance(upload, Verifiable)

    def checker(start: int, end: int, expected: bytes | None = None):
        expected = hashlib.sha256(data[start:end]).digest() if expected is None else expected

        async def verify(written: int) -> bool:
            assert written == end - start
            return hashlib.sha256(await read_all(upload, start, end)).digest() == expected

        return verify

    assert await upload.write_verified(0, chunks_of(data[:first]), checker(0, first)) == first
    wrong = hashlib.sha256(b"something else").digest()
    assert await upload.write_verified(first, chunks_of(data[first:]), checker(first, SIZE, wrong)) == 0
    upload = await make_store().get(upload_id)
    assert (await upload.info()).offset == first
    assert isinstance(upload, Verifiable)
    assert await upload.write_verified(first, chunks_of(data[first:]), checker(first, SIZE)) == SIZE - first
    await upload.finish()
    assert await read_all(await make_store().get(upload_id)) == data


async def test_a_verified_chunk_abandoned_midway_is_not_counted(make_store):
    """A process that dies in the middle of a checksummed chunk (here: its write hangs after more than a piece's
    worth of bytes, another store object looks, then the write is killed) leaves nothing counted: another process
    resumes at the chunk's start, and the finished upload is exactly the data."""
    import asyncio

    store = make_store()
    if not capabilities(store).write_verified:
        return
    data = os.urandom(SIZE)
    upload = await store.create(UploadInfo(size=SIZE))
    upload_id = (await upload.info()).id
    assert isinstance(upload, Verifiable)
    await upload.write(0, chunks_of(data[: MIB]))
    arrived = asyncio.Event()

    async def dying() -> AsyncIterator[bytes]:
        async for block in chunks_of(data[MIB : 8 * MIB]):
            yield block
        arrived.set()
        await asyncio.Event().wait()  # the client and the process are gone: nothing more ever comes

    async def accept(written: int) -> bool:
        return True

    task = asyncio.ensure_future(upload.write_verified(MIB, dying(), accept))
    await asyncio.wait_for(arrived.wait(), 60)
    await asyncio.sleep(0.5)  # time for any piece upload that the write might (wrongly) have started
    assert (await (await make_store().get(upload_id)).info()).offset == MIB
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    resumed = await make_store().get(upload_id)
    assert (await resumed.info()).offset == MIB
    assert isinstance(resumed, Verifiable)
    assert await resumed.write_verified(MIB, chunks_of(data[MIB:]), accept) == SIZE - MIB
    await resumed.finish()
    assert await read_all(await make_store().get(upload_id)) == data


# --- expiration: the cleaner removes an expired unfinished upload completely ----------------------------------------


def _stored_names(store) -> list[str]:
    """Everything the store's backend holds, listed by the backend itself (not through the store's own idea)."""
    from pytusd import FileStore

    if isinstance(store, FileStore):
        return sorted(
            os.path.relpath(os.path.join(folder, name), store.root)
            for folder, _dirs, files in os.walk(store.root) for name in files
        )
    from pytusd.stores.gcs import GCSStore

    if isinstance(store, GCSStore):
        return sorted(str(blob.name) for blob in store.client.list_blobs(store.bucket))
    from pytusd.stores.s3 import S3Store

    if isinstance(store, S3Store):  # the objects and the multipart uploads (their parts go with them)
        keys = [obj["Key"] for obj in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])]
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        return sorted(keys + [f"multipart upload {u['Key']} {u['UploadId']}" for u in uploads])
    from pytusd.stores.azure import AzureStore

    if isinstance(store, AzureStore):  # blobs with only uncommitted blocks too
        container = store.service.get_container_client(store.container)
        return sorted(str(blob.name) for blob in container.list_blobs(include=["uncommittedblobs"]))
    raise NotImplementedError(f"{type(store).__name__} declares expire: list its backend here to prove it")


async def test_expiration_removes_every_object_of_an_expired_upload(make_store):
    """The cleaner (what ``pytusd cleanup`` runs once) removes an expired unfinished upload: afterwards the backend,
    listed, holds nothing of it but the note that it expired, and it answers 410, later (forgotten) 404. A fresh
    unfinished upload and a finished one are left as they were."""
    import asyncio
    import time

    from pytusd.core.expiration import Cleaner
    from pytusd.lockers.memory import MemoryLocker

    store = make_store()
    if not capabilities(store).expire:  # then it must not be advertised
        assert "expiration" not in TusApp(Config(store=store, expiration=60)).handlers.extensions.split(",")
        return
    data = os.urandom(SIZE)
    old = await store.create(UploadInfo(size=SIZE))
    old_id = (await old.info()).id
    stem = old_id.split("+")[0]  # S3's ID is <object>+<multipart upload>; its objects are named by the first
    await old.write(0, chunks_of(data[: 6 * MIB + 3]))
    done = await store.create(UploadInfo(size=5))
    done_id = (await done.info()).id
    await done.write(0, chunks_of(b"hello"))
    await done.finish()
    assert any(stem in name for name in _stored_names(store))
    await asyncio.sleep(3)
    fresh = await store.create(UploadInfo(size=SIZE))
    fresh_id = (await fresh.info()).id
    await fresh.write(0, chunks_of(data[:1000]))
    others = [name for name in _stored_names(store) if stem not in name]

    cleaner = Cleaner(make_store(), MemoryLocker(), expiration=2.0, interval=60)
    assert await cleaner.run_once() == 1
    left = [name for name in _stored_names(store) if stem in name]
    assert len(left) == 1 and left[0].endswith(".expired"), left
    assert [name for name in _stored_names(store) if stem not in name] == others
    with pytest.raises(errors.TusError) as gone:
        await make_store().get(old_id)
    assert gone.value.status == 410
    assert (await (await make_store().get(fresh_id)).info()).offset == 1000
    assert await read_all(await make_store().get(done_id)) == b"hello"

    assert await make_store().forget_expired(time.time() + 1) == 1
    assert not [name for name in _stored_names(store) if stem in name]
    with pytest.raises(errors.TusError) as forgotten:
        await make_store().get(old_id)
    assert forgotten.value.status == 404
