"""FileStore on its own: layout, offsets from the data file, atomic info, capabilities."""

from __future__ import annotations

import json
import os

import pytest

from pytusd import FileStore, UploadInfo, errors
from pytusd.stores import Concatenatable, Expirable, LengthDeferrable, Terminatable, Verifiable, capabilities


async def chunks(*parts: bytes):
    for part in parts:
        yield part


@pytest.fixture
def store(tmp_path):
    s = FileStore(tmp_path / "d")
    s.ensure_directory()
    return s


async def test_capabilities(store):
    declared = capabilities(store)
    assert declared.terminate and declared.declare_length and declared.concat
    assert declared.write_verified and declared.expire and declared.modified_time
    upload = await store.create(UploadInfo(size=1))
    for protocol in (Terminatable, LengthDeferrable, Concatenatable, Verifiable, Expirable):
        assert isinstance(upload, protocol)


async def test_create_write_get(store):
    upload = await store.create(UploadInfo(size=10, metadata={"a": "b"}))
    info = await upload.info()
    assert len(info.id) == 32 and info.offset == 0
    assert await upload.write(0, chunks(b"01234", b"567")) == 8
    again = await store.get(info.id)
    got = await again.info()
    assert got.offset == 8 and got.size == 10 and got.metadata == {"a": "b"}
    assert b"".join([b async for b in again.reader()]) == b"01234567"
    assert b"".join([b async for b in again.reader(2, 5)]) == b"234"


async def test_info_file_is_tusd_fileinfo_and_written_atomically(store):
    upload = await store.create(UploadInfo(size=3))
    info = await upload.info()
    files = sorted(os.listdir(store.root))
    assert files == [info.id, f"{info.id}.info"]  # no temporary file left behind
    data = json.loads(open(os.path.join(store.root, f"{info.id}.info")).read())
    assert set(data) == {"ID", "Size", "SizeIsDeferred", "Offset", "MetaData", "IsPartial", "IsFinal",
                         "PartialUploads", "Storage"}


async def test_offset_is_the_data_file_size(store):
    upload = await store.create(UploadInfo(size=100))
    upload_id = (await upload.info()).id
    with open(os.path.join(store.root, upload_id), "ab") as f:
        f.write(b"x" * 42)
    assert (await (await store.get(upload_id)).info()).offset == 42


async def test_write_at_offset_uses_that_position(store):
    upload = await store.create(UploadInfo(size=6))
    await upload.write(0, chunks(b"abc"))
    await upload.write(3, chunks(b"def"))
    assert open(upload.data_path, "rb").read() == b"abcdef"


async def test_unknown_and_invalid_ids_are_not_found(store):
    for bad in ("0" * 32, "../etc", "a/../../b", "", "x" * 1000):
        with pytest.raises(errors.TusError) as info:
            await store.get(bad)
        assert info.value.code == "ERR_UPLOAD_NOT_FOUND"


async def test_missing_data_file_is_not_found(store):
    upload = await store.create(UploadInfo(size=1))
    os.unlink(upload.data_path)
    with pytest.raises(errors.TusError) as info:
        await store.get((await upload.info()).id)
    assert info.value.status == 404


async def test_terminate_removes_both_files(store):
    upload = await store.create(UploadInfo(size=1))
    await upload.terminate()
    assert os.listdir(store.root) == []


async def test_declare_length(store):
    upload = await store.create(UploadInfo(size_is_deferred=True))
    await upload.declare_length(5)
    info = await (await store.get((await upload.info()).id)).info()
    assert info.size == 5 and not info.size_is_deferred


async def test_concat(store):
    a = await store.create(UploadInfo(size=2, is_partial=True))
    b = await store.create(UploadInfo(size=3, is_partial=True))
    await a.write(0, chunks(b"ab"))
    await b.write(0, chunks(b"cde"))
    final = await store.create(UploadInfo(size=5, is_final=True))
    await final.concat([a, b])
    assert (await final.info()).offset == 5
    assert open(final.data_path, "rb").read() == b"abcde"


async def test_preset_id_and_existing_id(store):
    upload = await store.create(UploadInfo(id="custom-id", size=1))
    assert (await upload.info()).id == "custom-id"
    with pytest.raises(errors.TusError):
        await store.create(UploadInfo(id="custom-id", size=1))


async def test_permissions(tmp_path):
    store = FileStore(tmp_path / "p", dir_perms=0o700, file_perms=0o600)
    old = os.umask(0)
    try:
        store.ensure_directory()
        upload = await store.create(UploadInfo(id="sub/dir-id", size=1))
    finally:
        os.umask(old)
    assert os.stat(upload.data_path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(upload.data_path)).st_mode & 0o777 == 0o700


async def test_fsync_mode_writes_the_same_bytes(tmp_path):
    store = FileStore(tmp_path / "f", fsync=True)
    store.ensure_directory()
    upload = await store.create(UploadInfo(size=4))
    await upload.write(0, chunks(b"ab", b"cd"))
    assert open(upload.data_path, "rb").read() == b"abcd"


async def test_write_stops_cleanly_when_chunks_end_early(store):
    upload = await store.create(UploadInfo(size=100))

    async def interrupted():
        yield b"first"
        return

    assert await upload.write(0, interrupted()) == 5
    assert (await upload.info()).offset == 5


async def test_disk_full_is_507_and_offset_stays_truthful(store, monkeypatch):
    upload = await store.create(UploadInfo(size=100))
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def failing_pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    with pytest.raises(errors.TusError) as info:
        await upload.write(0, chunks(b"12345", b"67890"))
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert info.value.status == 507 and info.value.code == "ERR_STORAGE_FULL"
    assert (await (await store.get((await upload.info()).id)).info()).offset == 5
