"""GCSStore against gcp-storage-emulator (started by the suite), plus the CRC32C arithmetic on its own.

The emulator is a stub of the GCS JSON API: it does not enforce preconditions (generation matches), the 32-source
limit of compose or object generations on reads, and it lists a bucket in one page. What these tests show about
those behaviours holds for the emulator only; see the notes on each test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import unittest.mock
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import google_crc32c
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from pytusd import errors
from pytusd.info import UploadInfo
from pytusd.stores import Concatenatable, LengthDeferrable, Terminatable, capabilities
from pytusd.stores import gcs as gcs_module
from pytusd.stores.gcs import GCSStore, GCSUpload, StoredObject, crc32c_combine

from tests.conftest import TUS, create, patch

KIB = 1 << 10
MIB = 1 << 20


# --- the emulator ---------------------------------------------------------------------------------------------------


def emulator_client(endpoint: str) -> storage.Client:
    """A client for the emulator that ignores the developer's environment (credentials, emulator variables)."""
    return storage.Client(project="pytusd-test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": endpoint})


def new_bucket(client: storage.Client) -> str:
    name = f"pytusd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    return name


def remove_bucket(client: storage.Client, name: str) -> None:
    for blob in client.list_blobs(name):
        blob.delete()
    client.bucket(name).delete()


def contract_builder(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[Any, Any]:
    """For tests/unit/stores/test_base.py: a new GCSStore (and client: another process) on one bucket per call."""
    endpoint = request.getfixturevalue("gcs_endpoint")
    client = emulator_client(endpoint)
    bucket = new_bucket(client)

    def make() -> GCSStore:
        # 4 MiB chunks: the contract's 11 MiB upload becomes several chunk objects and a short one.
        return GCSStore(bucket, emulator_client(endpoint), chunk_size=4 * MIB, temp_dir=str(tmp_path))

    return make, lambda: remove_bucket(client, bucket)


@dataclass
class Bucket:
    client: storage.Client
    name: str
    endpoint: str

    def store(self, **options: Any) -> GCSStore:
        """A new store object with its own client: stands for another process."""
        return GCSStore(self.name, emulator_client(self.endpoint), **options)

    def names(self) -> set[str]:
        return {b.name for b in self.client.list_blobs(self.name)}

    def blob(self, name: str) -> storage.Blob:
        blob = self.client.bucket(self.name).get_blob(name)
        assert blob is not None, name
        return blob

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.bucket(self.name).blob(name).upload_from_string(data, content_type=content_type)


@pytest.fixture
def gcs(gcs_endpoint):
    client = emulator_client(gcs_endpoint)
    bucket = Bucket(client, new_bucket(client), gcs_endpoint)
    yield bucket
    remove_bucket(client, bucket.name)


async def chunks_of(data: bytes, size: int = 64 * KIB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(upload: GCSUpload, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([block async for block in upload.reader(start, end)])


def crc32c_of(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


# --- CRC32C arithmetic ----------------------------------------------------------------------------------------------


def test_crc32c_combine_matches_the_crc_of_the_concatenation():
    for sizes in [(0, 0), (1, 0), (0, 5), (3, 1000), (4096, 1), (100_000, 70_001)]:
        a, b = os.urandom(sizes[0]), os.urandom(sizes[1])
        combined = crc32c_combine(google_crc32c.value(a), google_crc32c.value(b), len(b))
        assert combined == google_crc32c.value(a + b), sizes


def test_chunks_keep_their_size_and_a_remainder_is_always_a_chunk():
    # GCS composes any number of chunks: no doubling for a deferred length, no tail object.
    plan = GCSStore("b", unittest.mock.Mock(), chunk_size=KIB).plan  # the plan needs no client
    assert plan.size_of(1, None) == plan.size_of(5_000, None) == plan.size_of(1, 10**12) == KIB
    assert plan.remainder_is_piece(10**6, 1, 10**9 + 1, None) and plan.remainder_is_piece(1, 1, 1, 100)


# --- writing, resuming, finishing -------------------------------------------------------------------------------------


async def test_one_patch_is_cut_into_chunk_objects_and_a_new_store_derives_the_offset(gcs):
    store = gcs.store(chunk_size=64 * KIB, object_prefix="up")
    assert capabilities(store).terminate and capabilities(store).declare_length and capabilities(store).concat
    data = os.urandom(300 * KIB + 17)
    upload = await store.create(UploadInfo(size=len(data)))
    assert isinstance(upload, Terminatable) and isinstance(upload, LengthDeferrable)
    assert isinstance(upload, Concatenatable)
    info = await upload.info()
    key = f"up/{info.id}"
    assert info.storage == {"Type": "gcsstore", "Bucket": gcs.name, "Key": key}
    assert json.loads(gcs.blob(f"{key}.info").download_as_bytes())["ID"] == info.id

    # One PATCH of 200 KiB + 5 (sent in odd pieces): three full chunks and a short one.
    assert await upload.write(0, chunks_of(data[: 200 * KIB + 5], 10_000)) == 200 * KIB + 5
    assert gcs.names() == {f"{key}.info", f"{key}_0", f"{key}_1", f"{key}_2", f"{key}_3"}
    assert [gcs.blob(f"{key}_{n}").size for n in range(4)] == [64 * KIB] * 3 + [8 * KIB + 5]

    resumed = await gcs.store(chunk_size=64 * KIB, object_prefix="up").get(info.id)
    assert (await resumed.info()).offset == 200 * KIB + 5
    # Readable before it is finished, from the chunk objects, across their borders.
    assert await read_all(resumed, 60 * KIB, 140 * KIB) == data[60 * KIB : 140 * KIB]
    assert await resumed.write(200 * KIB + 5, chunks_of(data[200 * KIB + 5 :])) == len(data) - 200 * KIB - 5
    assert f"{key}_4" in gcs.names()  # numbering goes on after the short chunk
    await resumed.finish()

    # Finished: one object (the chunks are gone), its size is the offset, its CRC32C the data's.
    assert gcs.names() == {f"{key}.info", key}
    final = gcs.blob(key)
    assert final.size == len(data) and final.crc32c == crc32c_of(data)
    done = await gcs.store(object_prefix="up").get(info.id)
    assert (await done.info()).offset == len(data)
    assert await read_all(done) == data
    assert await read_all(done, 100, 200) == data[100:200]
    assert await read_all(done, len(data) - 3) == data[-3:]


async def test_a_chunk_larger_than_the_upload_buffer_goes_as_a_resumable_upload(gcs):
    # Chunks over 8 MiB are resumable uploads in 8 MiB requests (the emulator answers 308 between them).
    store = gcs.store(chunk_size=9 * MIB)
    data = os.urandom(10 * MIB + 1)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data, MIB))
    assert gcs.blob(f"{upload.key}_0").size == 9 * MIB
    await upload.finish()
    assert await read_all(await gcs.store().get(upload.id)) == data


async def test_a_chunk_after_a_gap_is_not_counted_and_never_joins_later(gcs):
    store = gcs.store(chunk_size=KIB)
    data = os.urandom(8 * KIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data[: 4 * KIB]))
    gcs.client.bucket(gcs.name).blob(f"{upload.key}_1").delete()  # a gap: chunk 1 is missing, 2 and 3 exist

    fresh = await gcs.store(chunk_size=KIB).get(upload.id)
    assert (await fresh.info()).offset == KIB
    # A PATCH that fills only the gap: the old chunks 2 and 3 must not count after it.
    await fresh.write(KIB, chunks_of(b"X" * KIB))
    assert f"{upload.key}_2" not in gcs.names() and f"{upload.key}_3" not in gcs.names()
    again = await gcs.store(chunk_size=KIB).get(upload.id)
    assert (await again.info()).offset == 2 * KIB
    expected = data[:KIB] + b"X" * KIB + data[2 * KIB :]
    await again.write(2 * KIB, chunks_of(expected[2 * KIB :]))
    await again.finish()
    assert await read_all(await gcs.store().get(upload.id)) == expected


async def test_a_failed_chunk_upload_leaves_a_truthful_offset(gcs):
    store = gcs.store(chunk_size=KIB, max_buffered_chunks=1, concurrent_chunk_uploads=1)
    data = os.urandom(6 * KIB)
    upload = await store.create(UploadInfo(size=len(data)))
    upload_chunk = store._upload_chunk

    def failing(name: str, spool: Any, size: int) -> Any:
        if name.endswith("_1"):
            raise RuntimeError("network down")
        return upload_chunk(name, spool, size)

    store._upload_chunk = failing  # type: ignore[method-assign]
    with pytest.raises(errors.TusError) as failure:
        await upload.write(0, chunks_of(data, 512))
    assert failure.value.status == 500 and "GCS error: network down" in failure.value.message
    fresh = await gcs.store(chunk_size=KIB).get(upload.id)
    assert (await fresh.info()).offset == KIB
    await fresh.write(KIB, chunks_of(data[KIB:]))
    await fresh.finish()
    assert await read_all(await gcs.store().get(upload.id)) == data


async def test_an_interrupted_body_keeps_what_arrived(gcs):
    store = gcs.store(chunk_size=4 * KIB)
    data = os.urandom(20 * KIB)
    upload = await store.create(UploadInfo(size=len(data)))

    async def broken() -> AsyncIterator[bytes]:
        yield data[: 3 * KIB]
        yield data[3 * KIB : 7 * KIB + 1]
        raise errors.ERR_UNEXPECTED_EOF()

    with pytest.raises(errors.TusError) as failure:
        await upload.write(0, broken())
    assert failure.value.code == "ERR_UNEXPECTED_EOF"
    fresh = await gcs.store(chunk_size=4 * KIB).get(upload.id)
    assert (await fresh.info()).offset == 7 * KIB + 1
    await fresh.write(7 * KIB + 1, chunks_of(data[7 * KIB + 1 :]))
    await fresh.finish()
    assert await read_all(fresh) == data


async def test_more_than_32_chunks_are_composed_in_groups(gcs):
    # Emulator only: it composes any number of sources, so this shows the grouping and the clean-up, not GCS's limit.
    store = gcs.store(chunk_size=KIB, concurrent_chunk_uploads=16, max_buffered_chunks=32)
    data = os.urandom(70 * KIB + 3)  # 71 chunks: 3 intermediate objects, then the final one
    upload = await store.create(UploadInfo(size=len(data), metadata={"filetype": "text/plain"}))
    await upload.write(0, chunks_of(data, 4 * KIB))
    assert len(gcs.names()) == 72
    composed: list[tuple[int, str]] = []
    compose_once = store._compose_once

    def counting(sources: Any, name: str, content_type: Any, metadata: Any) -> Any:
        composed.append((len(sources), name))
        return compose_once(sources, name, content_type, metadata)

    store._compose_once = counting  # type: ignore[method-assign]
    await upload.finish()
    key = upload.key
    assert sorted(composed) == sorted([(32, f"{key}_tmp_0_0"), (32, f"{key}_tmp_0_1"), (7, f"{key}_tmp_0_2"), (3, key)])
    assert gcs.names() == {key, f"{key}.info"}  # chunks and intermediate objects are gone
    final = gcs.blob(key)
    assert final.size == len(data) and final.crc32c == crc32c_of(data) and final.content_type == "text/plain"
    assert await read_all(await gcs.store().get(upload.id)) == data


async def test_compose_recursion_over_many_levels(gcs):
    """The grouping alone (no emulator: 1,025 chunk objects take it minutes): 1025 -> 33 -> 2 -> 1."""
    store = gcs.store()
    calls: list[tuple[list[str], str]] = []
    deleted: list[str] = []

    def fake_compose(sources: list[StoredObject], name: str, content_type: Any, metadata: Any) -> StoredObject:
        calls.append(([s.name for s in sources], name))
        crc = 0
        for s in sources:
            crc = crc32c_combine(crc, gcs_module._crc_from_gcs(s.crc32c), s.size)
        return StoredObject(name, sum(s.size for s in sources), 1, gcs_module._crc_to_gcs(crc))

    store._compose_once = fake_compose  # type: ignore[method-assign]
    store._delete_one = deleted.append  # type: ignore[method-assign]
    pieces = [os.urandom(5) for _ in range(1025)]
    sources = [StoredObject(f"k_{n}", 5, 1, crc32c_of(p)) for n, p in enumerate(pieces)]
    result = await store._compose(sources, "k", "text/plain", {})
    assert result.size == 5 * 1025 and result.crc32c == crc32c_of(b"".join(pieces))
    assert all(len(names) <= 32 for names, _ in calls)
    by_name = dict((name, names) for names, name in calls)
    assert by_name["k"] == ["k_tmp_1_0", "k_tmp_1_1"]
    assert by_name["k_tmp_1_1"] == ["k_tmp_0_32"] and by_name["k_tmp_0_32"] == ["k_1024"]
    assert by_name["k_tmp_0_0"] == [f"k_{n}" for n in range(32)]
    assert sorted(deleted) == sorted([f"k_tmp_0_{i}" for i in range(33)] + ["k_tmp_1_0", "k_tmp_1_1"])


async def test_a_compose_that_does_not_match_its_sources_is_undone(gcs, monkeypatch):
    """Emulator only: it computes the composite's CRC32C honestly, so the mismatch is simulated on our side."""
    store = gcs.store(chunk_size=KIB)
    data = os.urandom(5 * KIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data))
    monkeypatch.setattr(gcs_module, "crc32c_combine", lambda a, b, n: 12345)
    with pytest.raises(errors.TusError) as failure:
        await upload.finish()
    assert failure.value.status == 500 and "does not match" in failure.value.message
    assert upload.key not in gcs.names()  # the bad object was removed; the chunks are still there and served
    fresh = await gcs.store().get(upload.id)
    assert (await fresh.info()).offset == len(data) and await read_all(fresh) == data
    monkeypatch.undo()
    await fresh.finish()
    assert gcs.names() == {upload.key, f"{upload.key}.info"}


async def test_metadata_and_content_type_on_the_final_object(gcs):
    store = gcs.store(chunk_size=KIB)
    metadata = {"filename": "Grüße.png", "filetype": "image/png", "big": "x" * (9 * KIB), "empty": ""}
    upload = await store.create(UploadInfo(size=3000, metadata=metadata))
    await upload.write(0, chunks_of(os.urandom(3000)))
    await upload.finish()
    final = gcs.blob(upload.key)
    assert final.content_type == "image/png"
    # GCS allows 8 KiB of custom metadata: what would pass it is left off rather than failing the upload.
    assert final.metadata == {"filename": "Grüße.png", "filetype": "image/png", "empty": ""}

    odd = await store.create(UploadInfo(size=0, metadata={"filetype": "not a type"}))
    await odd.finish()
    assert gcs.blob(odd.key).content_type == "application/octet-stream"


async def test_empty_upload_and_deferred_length(gcs):
    store = gcs.store(chunk_size=KIB)
    empty = await store.create(UploadInfo(size=0))
    await empty.finish()
    assert gcs.blob(empty.key).size == 0 and await read_all(await gcs.store().get(empty.id)) == b""

    data = os.urandom(2500)
    deferred = await store.create(UploadInfo(size_is_deferred=True))
    await deferred.write(0, chunks_of(data))
    later = await gcs.store().get(deferred.id)
    await later.declare_length(len(data))
    stored = json.loads(gcs.blob(f"{deferred.key}.info").download_as_bytes())
    assert stored["Size"] == len(data) and stored["SizeIsDeferred"] is False
    assert (await later.info()).is_complete
    await later.finish()
    assert await read_all(await gcs.store().get(deferred.id)) == data


async def test_reading_while_another_process_finishes_the_upload(gcs):
    store = gcs.store(chunk_size=KIB)
    data = os.urandom(4 * KIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data))
    reading = await gcs.store().get(upload.id)  # its state names the chunk objects
    finishing = await gcs.store().get(upload.id)
    await finishing.finish()  # the chunks are deleted
    assert await read_all(reading, 100) == data[100:]  # ... so the read goes on from the final object


async def test_reads_go_in_ranged_blocks_and_may_stop_early(gcs, monkeypatch):
    monkeypatch.setattr(gcs_module, "READ_BLOCK", 1000)
    store = gcs.store(chunk_size=4 * KIB)
    data = os.urandom(10 * KIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data))
    for finished in (False, True):
        if finished:
            await upload.finish()
            upload = await gcs.store().get(upload.id)
        blocks = [block async for block in upload.reader(10, 9000)]
        assert max(map(len, blocks)) <= 1000 and b"".join(blocks) == data[10:9000]
        reader = upload.reader(5)
        assert await anext(reader) == data[5:1005]
        await reader.aclose()  # a client that goes away: the prefetched block is dropped


async def test_terminate_removes_every_object_of_the_upload_and_nothing_else(gcs):
    store = gcs.store(chunk_size=KIB)
    keep = await store.create(UploadInfo(size=10))
    await keep.write(0, chunks_of(b"0123456789"))
    upload = await store.create(UploadInfo(size=10 * KIB))
    await upload.write(0, chunks_of(os.urandom(3 * KIB)))
    gcs.put(f"{upload.key}_7", b"stale")  # after a gap
    gcs.put(f"{upload.key}_tmp_0_0", b"left by a compose")
    gcs.put(upload.key, b"final")
    await upload.terminate()
    assert gcs.names() == {f"{keep.key}.info", f"{keep.key}_0"}
    with pytest.raises(errors.TusError) as missing:
        await gcs.store().get(upload.id)
    assert missing.value.status == 404


async def test_ids(gcs):
    store = gcs.store()
    with pytest.raises(errors.TusError) as missing:
        await store.get(uuid.uuid4().hex)
    assert missing.value.status == 404
    chosen = await store.create(UploadInfo(id="chosen-by-a-hook", size=5))
    assert chosen.key == "chosen-by-a-hook" and f"{chosen.key}.info" in gcs.names()
    with pytest.raises(errors.TusError) as exists:  # never adopt another upload's objects
        await store.create(UploadInfo(id="chosen-by-a-hook", size=5))
    assert "exists already" in exists.value.message


async def test_ids_that_extend_each_other_stay_apart(gcs):
    """Hook-chosen IDs "a" and "a_1": "a_1" is also the name chunk 1 of "a" would have; its .info tells them apart."""
    store = gcs.store(chunk_size=4)
    short = await store.create(UploadInfo(id="a", size=4))
    long = await store.create(UploadInfo(id="a_1", size=6))
    await long.write(0, chunks_of(b"abcdef"))
    await long.finish()  # the object "a_1"
    fresh = await gcs.store(chunk_size=4).get("a")
    assert (await fresh.info()).offset == 0
    await fresh.write(0, chunks_of(b"wxyz"))
    await fresh.finish()
    assert await read_all(await gcs.store().get("a")) == b"wxyz"
    assert await read_all(await gcs.store().get("a_1")) == b"abcdef"
    await (await gcs.store().get("a")).terminate()
    assert gcs.names() == {"a_1", "a_1.info"}
    assert short.key == "a"


async def test_concatenation_composes_the_partials(gcs):
    store = gcs.store(chunk_size=KIB)
    sizes = [700, 0, *([100] * 31), 2 * KIB + 1, 1500]  # 35 partials: more than one compose call
    datas = [os.urandom(n) for n in sizes]
    partials = []
    for i, data in enumerate(datas):
        partial = await store.create(UploadInfo(size=len(data), is_partial=True))
        await partial.write(0, chunks_of(data))
        if i != len(datas) - 1:  # the last one is complete but not finished yet: its chunks are composed
            await partial.finish()
        partials.append(await gcs.store().get(partial.id))
    final = await store.create(
        UploadInfo(size=sum(sizes), is_final=True, partial_uploads=tuple(p.id for p in partials),
                   metadata={"filetype": "text/csv", "filename": "all.csv"})
    )
    before = gcs.names()
    await final.concat(partials)
    assert (await final.info()).is_complete
    await final.finish()
    assert gcs.names() == before | {final.key}  # the partials are untouched, no intermediate object is left
    blob = gcs.blob(final.key)
    assert blob.content_type == "text/csv" and blob.metadata == {"filetype": "text/csv", "filename": "all.csv"}
    assert blob.crc32c == crc32c_of(b"".join(datas))
    assert await read_all(await gcs.store().get(final.id)) == b"".join(datas)


async def test_a_bucket_written_by_tusd_is_resumed_and_served(gcs):
    """tusd's gcsstore: FileInfo JSON in <id>.info, one chunk object <id>_<n> per PATCH, <id> once finished."""

    def tusd_info(upload_id: str, size: int) -> bytes:
        return json.dumps({
            "ID": upload_id, "Size": size, "SizeIsDeferred": False, "Offset": 0,
            "MetaData": {"filename": "t.txt", "filetype": "text/plain"}, "IsPartial": False, "IsFinal": False,
            "PartialUploads": None, "Storage": {"Type": "gcsstore", "Bucket": gcs.name, "Key": upload_id},
        }).encode()

    data = os.urandom(5000)
    going = uuid.uuid4().hex
    gcs.put(f"{going}.info", tusd_info(going, len(data)), "application/json")
    gcs.put(f"{going}_0", data[:1234])  # tusd writes each PATCH as one object, whatever its size
    gcs.put(f"{going}_1", data[1234:3000])
    upload = await gcs.store(chunk_size=KIB).get(going)
    info = await upload.info()
    assert info.offset == 3000 and info.metadata["filename"] == "t.txt"
    await upload.write(3000, chunks_of(data[3000:]))
    assert {f"{going}_2", f"{going}_3"} <= gcs.names()
    await upload.finish()
    assert await read_all(await gcs.store().get(going)) == data
    assert gcs.blob(going).metadata == {"filename": "t.txt", "filetype": "text/plain"}

    finished = uuid.uuid4().hex
    gcs.put(f"{finished}.info", tusd_info(finished, 3000), "application/json")
    gcs.put(finished, data[:3000])
    done = await gcs.store().get(finished)
    assert (await done.info()).is_complete and await read_all(done, 10, 20) == data[10:20]


# --- configuration ------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("GCS_SERVICE_ACCOUNT_FILE", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_from_options_with_an_emulator_endpoint(gcs, clean_env):
    store = GCSStore.from_options(gcs.name, object_prefix="p/", endpoint=gcs.endpoint)
    assert isinstance(store.client._credentials, AnonymousCredentials)
    assert repr(store) == f"GCSStore({gcs.name!r}, prefix='p/', endpoint={gcs.endpoint!r})"
    upload = await store.create(UploadInfo(size=3))
    assert f"p/{upload.id}.info" in gcs.names()


async def test_from_options_honours_storage_emulator_host(gcs, clean_env):
    clean_env.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint.removeprefix("http://"))
    store = GCSStore.from_options(gcs.name)
    upload = await store.create(UploadInfo(size=3))
    await upload.write(0, chunks_of(b"abc"))
    await upload.finish()
    assert await read_all(await GCSStore.from_options(gcs.name).get(upload.id)) == b"abc"


def test_from_options_reads_the_service_account_file(tmp_path, clean_env):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throw-away key")
    key = subprocess.run(["openssl", "genrsa", "2048"], capture_output=True, text=True, check=True).stdout
    account = tmp_path / "account.json"
    account.write_text(json.dumps({
        "type": "service_account", "project_id": "my-project", "private_key_id": "1", "private_key": key,
        "client_email": "pytusd@my-project.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    clean_env.setenv("GCS_SERVICE_ACCOUNT_FILE", str(account))
    store = GCSStore.from_options("bucket")  # no request is made: the bucket need not exist
    credentials = store.client._credentials
    assert credentials.service_account_email == "pytusd@my-project.iam.gserviceaccount.com"
    assert store.client.project == "my-project"
    assert "https://www.googleapis.com/auth/devstorage.read_write" in credentials.scopes


def test_from_options_explains_missing_credentials(tmp_path, clean_env):
    (tmp_path / "broken.json").write_text("{}")
    clean_env.setenv("GCS_SERVICE_ACCOUNT_FILE", str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="GCS_SERVICE_ACCOUNT_FILE"):
        GCSStore.from_options("bucket")
    clean_env.delenv("GCS_SERVICE_ACCOUNT_FILE")
    # Application default credentials pointing at nothing (and no endpoint): no credentials at all.
    clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="no Google Cloud credentials found"):
        GCSStore.from_options("bucket")


def test_a_missing_sdk_names_the_extra(clean_env):
    clean_env.setitem(sys.modules, "google.cloud.storage", None)
    hint = r"pip install 'google-cloud-storage>=2.16' \(from a pytusd checkout: pip install '\.\[gcs\]'\)"
    with pytest.raises(ImportError, match=hint):
        GCSStore.from_options("bucket", endpoint="http://127.0.0.1:9")


def test_flags_choose_the_gcs_store(tmp_path, clean_env):
    from pytusd.server.cli.compose import config_from_args
    from pytusd.server.cli.flags import build_parser, normalise_argv

    argv = ["-gcs-bucket", "b", "-gcs-object-prefix", "up", "-gcs-endpoint", "http://127.0.0.1:9",
            "--upload-dir", str(tmp_path)]
    store = config_from_args(build_parser().parse_args(normalise_argv(argv))).store
    assert isinstance(store, GCSStore) and store.bucket == "b" and store.object_key("x") == "up/x"
    assert "127.0.0.1:9" in repr(store)


# --- through the app ------------------------------------------------------------------------------------------------


async def test_through_the_app(gcs, client_factory):
    store = gcs.store(chunk_size=64 * KIB)
    client = client_factory(store=store)
    r = await client.options("/files/")
    extensions = r.headers["tus-extension"].split(",")
    assert {"creation", "termination", "concatenation", "creation-defer-length"} <= set(extensions)
    data = os.urandom(300 * KIB)
    metadata = "filename dGVzdC50eHQ=,filetype dGV4dC9wbGFpbg=="  # test.txt, text/plain
    url = await create(client, len(data), **{"Upload-Metadata": metadata})
    assert (await patch(client, url, 0, data[:100 * KIB])).status_code == 204
    r = await client.get(url, headers=TUS)  # an unfinished upload is served from its chunks
    assert r.status_code == 200 and r.content == data[: 100 * KIB]
    r = await patch(client, url, 100 * KIB, data[100 * KIB :])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    r = await client.head(url, headers=TUS)
    assert r.headers["upload-offset"] == str(len(data))
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    assert gcs.names() == {upload_id, f"{upload_id}.info"}
    assert gcs.blob(upload_id).content_type == "text/plain"
    r = await client.get(url, headers={**TUS, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = await client.get(url, headers=TUS)
    assert r.content == data and "test.txt" in r.headers["content-disposition"]
    assert r.headers["content-type"].startswith("text/plain") and r.headers.get("etag")

    # Concatenation through the protocol.
    parts = []
    for piece in (data[:1000], data[1000:1500]):
        part_url = await create(client, len(piece), **{"Upload-Concat": "partial"})
        assert (await patch(client, part_url, 0, piece)).status_code == 204
        parts.append(part_url)
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)})
    assert r.status_code == 201
    r = await client.get(r.headers["location"], headers=TUS)
    assert r.content == data[:1500]

    assert (await client.delete(url, headers=TUS)).status_code == 204
    assert (await client.head(url, headers=TUS)).status_code == 404
    assert upload_id not in gcs.names() and f"{upload_id}.info" not in gcs.names()
