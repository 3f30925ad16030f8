"""AzureStore against Azurite (started by the suite), plus the block arithmetic and block IDs on their own."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import time
import uuid

import pytest

from pytusd import errors
from pytusd.info import UploadInfo
from pytusd.stores import Concatenatable, LengthDeferrable, Terminatable, Timestamped, capabilities

azure_blob = pytest.importorskip("azure.storage.blob")

from azure.core.exceptions import ResourceNotFoundError  # noqa: E402
from azure.storage.blob import BlobServiceClient  # noqa: E402

from pytusd.stores.azure import (  # noqa: E402
    MAX_BLOB_SIZE,
    MAX_BLOCK_SIZE,
    MAX_BLOCKS,
    MAX_DEFERRED_SIZE,
    READ_RANGE,
    AzureStore,
    BlockPlan,
    block_id,
    chain,
    marker_id,
    parse_block_id,
)
from testbed.services import AZURITE_ACCOUNT, AZURITE_KEY  # noqa: E402

from tests.conftest import TUS, create, patch  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 4 * MIB  # small blocks, so that a few MiB make several


def service_for(endpoint: str) -> BlobServiceClient:
    return BlobServiceClient(endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})


def contract_builder(request, tmp_path, endpoint_fixture: str = "azure_endpoint"):
    """For tests/unit/stores/test_base.py: each ``make()`` is a new store with a new client on the same container
    (``azure_next_endpoint``: on Azurite 3.37, where concatenation copies with Put Block From URL)."""
    endpoint = request.getfixturevalue(endpoint_fixture)
    container = f"contract-{uuid.uuid4().hex[:12]}"

    def make() -> AzureStore:
        return AzureStore(container, service_for(endpoint), block_size=BLOCK, temp_dir=str(tmp_path))

    def cleanup() -> None:
        try:
            service_for(endpoint).delete_container(container)
        except ResourceNotFoundError:
            pass

    return make, cleanup


# --- the arithmetic ------------------------------------------------------------------------------------------------


def simulate(plan: BlockPlan, length: int | None, patches: list[int], declared: int | None = None) -> int:
    """How many blocks an upload takes when the client sends PATCHes of these sizes (the AzureStore's rules);
    ``declared`` becomes the length after the PATCHes of a deferred upload (then more PATCHes of the last size)."""
    blocks = tail = stored = 0  # stored: bytes in blocks

    def send(size: int, length: int | None) -> None:
        nonlocal blocks, tail, stored
        pending = tail + size
        while pending >= plan.size_of(blocks + 1, length, stored):
            full = plan.size_of(blocks + 1, length, stored)
            pending -= full
            stored += full
            blocks += 1
        tail = 0
        if pending and plan.remainder_is_piece(blocks + 1, pending, stored + pending, length):
            blocks += 1
            stored += pending
        else:
            tail = pending

    for size in patches:
        send(size, length)
    if declared is not None:
        plan.check_fits(declared, blocks + 1, stored + tail)
        while stored + tail < declared:
            send(min(patches[-1], declared - stored - tail), declared)
    if tail:  # finish stages the tail as the last block
        blocks += 1
    return blocks


def patches_of(length: int, size: int) -> list[int]:
    return [size] * (length // size) + ([length % size] if length % size else [])


def test_a_known_length_never_needs_more_than_50000_blocks():
    plan = BlockPlan()
    for length in (1, 16 * MIB, 781 * GIB, 10 * 1024 * GIB, MAX_BLOB_SIZE):
        assert plan.size_of(1, length) * MAX_BLOCKS >= length
        assert plan.size_of(1, length) <= MAX_BLOCK_SIZE
    assert plan.size_of(1, 100 * MIB) == plan.preferred_size  # small uploads keep the configured block size


def test_a_deferred_length_doubles_the_block_size_and_keeps_a_margin():
    plan = BlockPlan()
    assert plan.size_of(1, None) == plan.preferred_size
    assert plan.size_of(1001, None) == 2 * plan.preferred_size
    assert plan.size_of(50_000, None) == MAX_BLOCK_SIZE
    # The margin above the deferred limit is what lets PATCHes end in short blocks; it holds for small blocks too.
    for block_size in (1 * MIB, 4 * MIB, 16 * MIB, 100 * MIB):
        assert BlockPlan(block_size=block_size).capacity(1, None) >= 2 * MAX_DEFERRED_SIZE


def test_many_small_patches_stay_under_the_block_limit():
    plan = BlockPlan()
    # 1 MiB PATCHes of 48 GiB: every PATCH is a short block, 49,152 of them.
    assert simulate(plan, 48 * GIB, [MIB] * (48 * 1024)) == 48 * 1024
    # 5 MiB PATCHes of 1 TiB (209,716 of them) would be 209,716 blocks; the .part blob gathers them once the
    # remaining blocks could no longer hold the rest as short blocks.
    length = 1024 * GIB
    assert simulate(plan, length, patches_of(length, 5 * MIB)) <= MAX_BLOCKS
    # Scaled down so that deferred lengths run fast: 100 blocks of at most 1 MiB, 1 KiB blocks.
    small = BlockPlan(block_size=1024, max_block_size=MIB, max_blocks=100, max_blob_size=100 * MIB,
                      max_deferred_size=50 * 1024)
    assert simulate(small, 500 * 1024, patches_of(500 * 1024, 100)) <= 100
    assert simulate(small, None, [100] * 500) <= 100


def test_a_length_declared_after_many_blocks_still_fits():
    plan = BlockPlan()
    # 40,000 PATCHes of 5 MiB with a deferred length, then 400 GiB declared: the blocks left grow to hold the rest.
    assert simulate(plan, None, [5 * MIB] * 40_000, declared=400 * GIB) <= MAX_BLOCKS
    assert plan.size_of(45_001, 400 * GIB, 300 * GIB) * 5_000 >= 100 * GIB
    with pytest.raises(errors.TusError) as info:
        plan.check_fits(MAX_BLOB_SIZE, 49_999, 0)  # two blocks of 4000 MiB cannot hold 190 TiB
    assert info.value.status == 413


def test_short_blocks_are_used_while_there_is_room():
    plan = BlockPlan()
    assert plan.remainder_is_piece(1, 3 * MIB, 3 * MIB, 100 * MIB)  # Azure has no minimum block size
    assert plan.remainder_is_piece(1, 1, 1, 1)  # the last bytes are the last block
    full = BlockPlan(block_size=10, max_block_size=10, max_blocks=10, max_blob_size=100)
    assert not full.remainder_is_piece(1, 5, 5, 100)  # 9 blocks of 10 cannot hold the other 95 bytes
    assert full.remainder_is_piece(1, 10, 10, 100)


def test_a_length_beyond_what_azure_holds_is_refused():
    with pytest.raises(errors.TusError) as info:
        BlockPlan().check_length(MAX_BLOB_SIZE + 1)
    assert info.value.status == 413


# --- block IDs -----------------------------------------------------------------------------------------------------


def test_block_ids_name_the_number_and_the_start():
    ids = [block_id(n, start) for n, start in ((1, 0), (2, 16 * MIB), (50_000, MAX_BLOB_SIZE - MAX_BLOCK_SIZE))]
    assert len({len(i) for i in ids}) == 1 and len(ids[0]) == 16  # 12 bytes, one length for all (Azure's rule)
    assert parse_block_id(ids[1]) == (1, 16 * MIB)
    assert parse_block_id(marker_id()) == (0x7FFFFFFF, 0)
    # tusd's IDs: the index as 4 little-endian bytes; its marker is index 0x7FFFFFFF.
    assert block_id(1, None) == "AAAAAA==" and block_id(2, None) == "AQAAAA=="
    assert marker_id(tusd=True) == "////fw==" and parse_block_id("////fw==") == (0x7FFFFFFF, None)
    assert parse_block_id(base64.b64encode(b"foreign").decode()) is None
    assert parse_block_id("not base64!") is None


def test_the_chain_follows_numbers_and_offsets_not_the_listing_order():
    # Listed out of order (Azure does not promise an order); block 3 is missing, so 4 does not count.
    listed = [(1, 10, 5), (0, 0, 10), (3, 20, 7)]
    assert [(b.number, b.start, b.size) for b in chain(listed)] == [(1, 0, 10), (2, 10, 5)]
    # A block left by an earlier request, whose start does not fit where the chain now ends, does not count.
    assert [b.number for b in chain([(0, 0, 10), (1, 16, 16)])] == [1]
    # Two blocks with the same number: the one that starts where the previous one ended.
    assert [(b.start, b.size) for b in chain([(0, 0, 10), (1, 16, 16), (1, 10, 6), (2, 16, 1)])] == [
        (0, 10), (10, 6), (16, 1)
    ]
    # tusd's blocks chain by number alone.
    assert [(b.number, b.start, b.tusd) for b in chain([(1, None, 5), (0, None, 3)])] == [(1, 0, True), (2, 3, True)]


# --- against Azurite -----------------------------------------------------------------------------------------------


@pytest.fixture
def azure(azure_endpoint):
    service = service_for(azure_endpoint)
    container = f"pytusd-{uuid.uuid4().hex[:12]}"
    service.pytusd_container = container  # type: ignore[attr-defined]
    yield service
    try:
        service.delete_container(container)
    except ResourceNotFoundError:
        pass


def store_for(azure, endpoint: str | None = None, **options) -> AzureStore:
    """A store on the test's container; an ``endpoint`` makes a new client (another process)."""
    options.setdefault("block_size", BLOCK)
    service = service_for(endpoint) if endpoint else azure
    return AzureStore(azure.pytusd_container, service, **options)


def names(azure) -> set[str]:
    return {b.name for b in azure.get_container_client(azure.pytusd_container).list_blobs()}


def staged(azure, name: str, kind: str = "uncommitted") -> list[tuple[int, int | None, int]]:
    """(number, start, size) of the uncommitted (or committed) blocks of a blob, markers included (number
    0x80000000)."""
    blob = azure.get_blob_client(azure.pytusd_container, name)
    listing = blob._client.block_blob.get_block_list(list_type=kind)
    result = []
    for block in getattr(listing, f"{kind}_blocks") or []:
        index, start = parse_block_id(block.name)
        result.append((index + 1, start, block.size))
    return sorted(result)


def stage(azure, name: str, block: str, data: bytes) -> None:
    blob = azure.get_blob_client(azure.pytusd_container, name)
    blob._client.block_blob.stage_block(block_id=block, content_length=len(data), body=io.BytesIO(data))


async def chunks_of(data: bytes, size: int = MIB):
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(upload, start=0, end=None) -> bytes:
    return b"".join([block async for block in upload.reader(start, end)])


async def test_a_patch_is_cut_into_blocks_and_another_process_sees_the_offset(azure, azure_endpoint):
    data = os.urandom(3 * BLOCK + 12345)
    store = store_for(azure)
    upload = await store.create(UploadInfo(size=len(data), metadata={"filename": "a.bin"}))
    info = await upload.info()
    assert info.storage == {"Type": "azurestore", "Container": azure.pytusd_container, "Key": info.id}
    assert f"{info.id}.info" in names(azure)  # the blob itself does not exist before it is committed
    assert await upload.write(0, chunks_of(data[: 2 * BLOCK + 100])) == 2 * BLOCK + 100
    # Committed at the end of the PATCH, so that the blob holds them (readable); the marker is dropped.
    assert staged(azure, info.id, "committed") == [(1, 0, BLOCK), (2, BLOCK, BLOCK), (3, 2 * BLOCK, 100)]
    assert staged(azure, info.id) == []
    blob = azure.get_blob_client(azure.pytusd_container, info.id)
    assert blob.get_blob_properties().metadata == {"pytusd_unfinished": "1"}
    assert blob.download_blob().readall() == data[: 2 * BLOCK + 100]

    other = store_for(azure, azure_endpoint)  # a new client, nothing cached
    resumed = await other.get(info.id)
    assert (await resumed.info()).offset == 2 * BLOCK + 100
    assert await resumed.write(2 * BLOCK + 100, chunks_of(data[2 * BLOCK + 100 :])) == len(data) - 2 * BLOCK - 100
    assert [(n, s) for n, s, _ in staged(azure, info.id, "committed")][:5] == [
        (1, 0), (2, BLOCK), (3, 2 * BLOCK), (4, 2 * BLOCK + 100), (5, 3 * BLOCK + 100)
    ]
    await resumed.finish()
    assert staged(azure, info.id) == []
    assert blob.get_blob_properties().metadata == {}  # finished: the commit replaced the unfinished mark
    done = await store_for(azure, azure_endpoint).get(info.id)
    assert (await done.info()).offset == len(data)
    assert await read_all(done) == data
    assert await read_all(done, BLOCK - 5, BLOCK + 5) == data[BLOCK - 5 : BLOCK + 5]
    reader = done.reader()  # a reader stopped early (the client went away) drops the range fetched ahead
    assert await anext(reader) == data[:READ_RANGE]
    await reader.aclose()
    stored = json.loads(azure.get_blob_client(azure.pytusd_container, f"{info.id}.info").download_blob().readall())
    assert stored["ID"] == info.id and stored["MetaData"] == {"filename": "a.bin"}


async def test_a_gap_in_the_block_numbers_does_not_count(azure):
    store = store_for(azure)
    upload = await store.create(UploadInfo(size=3 * BLOCK))
    stage(azure, upload.id, block_id(2, BLOCK), b"x" * BLOCK)  # block 2 without block 1
    fresh = await store.get(upload.id)
    assert (await fresh.info()).offset == 0
    data = os.urandom(3 * BLOCK)
    await fresh.write(0, chunks_of(data))
    await fresh.finish()
    assert await read_all(await store.get(upload.id)) == data


async def test_a_leftover_block_that_does_not_fit_does_not_count(azure):
    """Block 2 of an earlier request that failed at block 1 stays staged; a later, shorter block 1 must not make it
    count (S3 counts by number alone and would)."""
    store = store_for(azure)
    data = os.urandom(3 * BLOCK)
    upload = await store.create(UploadInfo(size=len(data)))
    stage(azure, upload.id, block_id(2, BLOCK), data[BLOCK : 2 * BLOCK])
    await upload.write(0, chunks_of(data[:MIB]))  # a short block 1
    fresh = await store.get(upload.id)
    assert (await fresh.info()).offset == MIB
    await fresh.write(MIB, chunks_of(data[MIB:]))
    await fresh.finish()
    assert await read_all(await store.get(upload.id)) == data


async def test_a_failed_block_keeps_only_what_was_confirmed(azure, monkeypatch):
    store = store_for(azure, concurrent_block_uploads=4)
    data = os.urandom(4 * BLOCK)
    upload = await store.create(UploadInfo(size=len(data)))
    original = store._stage_block

    async def failing(upload, tusd, number, start, spool, size):
        if number == 2:
            await asyncio.sleep(0.3)  # the blocks after it are staged meanwhile
            raise OSError("connection reset")
        return await original(upload, tusd, number, start, spool, size)

    monkeypatch.setattr(store, "_stage_block", failing)
    with pytest.raises(errors.TusError) as info:
        await upload.write(0, chunks_of(data))
    assert info.value.status == 500
    # The failed request still committed block 1; block 3, staged after the gap, was dropped by that commit.
    assert staged(azure, upload.id, "committed") == [(1, 0, BLOCK)] and staged(azure, upload.id) == []
    monkeypatch.setattr(store, "_stage_block", original)
    fresh = await store.get(upload.id)
    assert (await fresh.info()).offset == BLOCK
    assert await read_all(await store.get(upload.id)) == data[:BLOCK]
    # A process that died after staging block 2 but before its commit: block 2 counts, and a reader that needs it
    # commits it first (on the condition that the blob is as it loaded it).
    stage(azure, upload.id, block_id(2, BLOCK), data[BLOCK : 2 * BLOCK])
    crashed = await store.get(upload.id)
    assert (await crashed.info()).offset == 2 * BLOCK
    assert await read_all(crashed, BLOCK - 3, 2 * BLOCK) == data[BLOCK - 3 : 2 * BLOCK]
    assert staged(azure, upload.id, "committed") == [(1, 0, BLOCK), (2, BLOCK, BLOCK)]
    fresh = await store.get(upload.id)
    await fresh.write(2 * BLOCK, chunks_of(data[2 * BLOCK : 2 * BLOCK + 10]))  # ends inside where block 3 was
    again = await store.get(upload.id)
    assert (await again.info()).offset == 2 * BLOCK + 10
    await again.write(2 * BLOCK + 10, chunks_of(data[2 * BLOCK + 10 :]))
    await again.finish()
    assert await read_all(await store.get(upload.id)) == data


async def test_small_patches_gather_in_the_part_blob_when_blocks_run_short(azure, azure_endpoint):
    store = store_for(azure)
    store.plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)  # 4 blocks: no room for short ones
    data = os.urandom(4 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))
    step = 300 * 1024
    for offset in range(0, len(data), step):
        fresh = store_for(azure, azure_endpoint)
        fresh.plan = store.plan
        current = await fresh.get(upload.id)
        assert (await current.info()).offset == offset
        await current.write(offset, chunks_of(data[offset : offset + step], 100 * 1024))
        if offset + step < MIB:
            assert f"{upload.id}.part" in names(azure)
            assert staged(azure, upload.id) == [(0x80000000, 0, 1)]
    await current.finish()
    assert len(azure.get_blob_client(azure.pytusd_container, upload.id).get_block_list("committed")[0]) == 4
    assert f"{upload.id}.part" not in names(azure)
    assert await read_all(await store.get(upload.id)) == data


async def test_a_stale_part_blob_is_not_counted_twice(azure):
    """A crash between staging the block that holds the .part's bytes and deleting the .part blob."""
    store = store_for(azure)
    store.plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)
    data = os.urandom(4 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data[:1000]))
    tail = azure.get_blob_client(azure.pytusd_container, f"{upload.id}.part").get_blob_properties()
    assert tail.size == 1000 and tail.metadata["pytusd_tail_offset"] == "0"
    stage(azure, upload.id, block_id(1, 0), data[:MIB])  # the "crashed" request's block 1
    fresh = await store.get(upload.id)
    assert (await fresh.info()).offset == MIB
    # Nothing committed yet: a reader commits block 1 first (on the condition that no blob was committed since).
    assert await read_all(fresh) == data[:MIB]
    assert staged(azure, upload.id, "committed") == [(1, 0, MIB)]
    await fresh.write(MIB, chunks_of(data[MIB:]))
    assert f"{upload.id}.part" not in names(azure)
    await fresh.finish()
    assert await read_all(fresh) == data


async def test_deferred_length_with_the_rest_in_the_part_blob(azure):
    store = store_for(azure)
    assert capabilities(store).declare_length
    store.plan = BlockPlan(block_size=BLOCK, max_deferred_size=MAX_BLOB_SIZE)  # no margin: remainders wait
    data = os.urandom(BLOCK + 10)
    upload = await store.create(UploadInfo(size_is_deferred=True))
    await upload.write(0, chunks_of(data))
    assert f"{upload.id}.part" in names(azure)
    fresh = await store.get(upload.id)
    assert (await fresh.info()).size_is_deferred and (await fresh.info()).offset == len(data)
    assert isinstance(fresh, LengthDeferrable)
    await fresh.declare_length(len(data))
    assert (await fresh.info()).is_complete
    await fresh.finish()
    final = await store.get(upload.id)
    assert not (await final.info()).size_is_deferred
    assert await read_all(final) == data
    assert f"{upload.id}.part" not in names(azure)


async def test_access_tier_and_content_type_of_the_finished_blob(azure):
    store = store_for(azure, blob_access_tier="cool")
    data = os.urandom(1000)
    upload = await store.create(UploadInfo(size=len(data), metadata={"filetype": "image/png", "filename": "a.png"}))
    await upload.write(0, chunks_of(data))
    await upload.finish()
    properties = azure.get_blob_client(azure.pytusd_container, upload.id).get_blob_properties()
    assert properties.blob_tier == "Cool" and properties.content_settings.content_type == "image/png"
    assert properties.size == len(data)
    assert isinstance(upload, Timestamped)
    assert abs(await (await store.get(upload.id)).modified_time() - properties.last_modified.timestamp()) < 1


async def test_the_default_tier_and_no_filetype(azure):
    store = store_for(azure)
    upload = await store.create(UploadInfo(size=3, metadata={"filetype": "bad\nvalue"}))
    await upload.write(0, chunks_of(b"abc"))
    await upload.finish()
    properties = azure.get_blob_client(azure.pytusd_container, upload.id).get_blob_properties()
    assert properties.blob_tier == "Hot"  # Azurite's account default
    assert properties.content_settings.content_type == "application/octet-stream"


async def test_terminate_removes_blob_info_part_and_staged_blocks(azure):
    store = store_for(azure)
    assert capabilities(store).terminate and capabilities(store).concat
    store.plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)
    upload = await store.create(UploadInfo(size=4 * MIB))
    await upload.write(0, chunks_of(os.urandom(MIB + 10)))  # one block (committed) and a .part blob
    assert names(azure) == {upload.id, f"{upload.id}.info", f"{upload.id}.part"}
    assert isinstance(upload, Terminatable) and isinstance(upload, Concatenatable)
    await upload.terminate()
    assert names(azure) == set()
    with pytest.raises(ResourceNotFoundError):
        staged(azure, upload.id)
    with pytest.raises(errors.TusError) as info:
        await store.get(upload.id)
    assert info.value.status == 404
    # A finished upload too.
    done = await store.create(UploadInfo(size=3))
    await done.write(0, chunks_of(b"abc"))
    await done.finish()
    await (await store.get(done.id)).terminate()
    assert names(azure) == set()


async def test_empty_upload_and_a_reused_id(azure):
    store = store_for(azure)
    upload = await store.create(UploadInfo(size=0))
    await upload.finish()
    assert await read_all(await store.get(upload.id)) == b""
    # An ID chosen by a hook, used before: what was staged for it is dropped.
    stage(azure, "chosen", block_id(1, 0), b"old bytes")
    again = await store.create(UploadInfo(id="chosen", size=5))
    assert (await (await store.get("chosen")).info()).offset == 0
    await again.write(0, chunks_of(b"fresh"))
    await again.finish()
    assert await read_all(await store.get("chosen")) == b"fresh"


async def test_unknown_or_mismatched_ids_are_not_found(azure):
    store = store_for(azure)
    for bad in ("nope", ""):
        with pytest.raises(errors.TusError) as info:
            await store.get(bad)
        assert info.value.status == 404
    upload = await store.create(UploadInfo(size=10))
    info_blob = azure.get_blob_client(azure.pytusd_container, f"{upload.id}.info").download_blob().readall()
    azure.get_blob_client(azure.pytusd_container, "other.info").upload_blob(info_blob)
    with pytest.raises(errors.TusError) as info:
        await store.get("other")
    assert info.value.status == 404
    assert sorted([i async for i in store.upload_ids()]) == sorted([upload.id, "other"])


async def test_azure_errors_become_internal_server_errors(azure_endpoint):
    store = AzureStore("Not_A_Valid_Container", service_for(azure_endpoint))
    with pytest.raises(errors.TusError) as info:
        await store.create(UploadInfo(size=1))
    assert info.value.status == 500 and "Azure error: InvalidResourceName" in str(info.value), str(info.value)
    nobody = BlobServiceClient("http://127.0.0.1:9/devstoreaccount1", credential=AZURITE_KEY, retry_total=0)
    unreachable = AzureStore("c", nobody)
    with pytest.raises(errors.TusError) as info:
        await unreachable.get("x")
    # Cannot be reached: a passing condition, 503 with Retry-After (tests/unit/server/test_startup.py).
    assert info.value.status == 503 and info.value.code == "ERR_STORAGE_UNAVAILABLE", str(info.value)


async def test_a_container_written_by_tusd_is_resumed_and_served(azure):
    """tusd's layout: its .info JSON, blocks with 4-byte IDs (one per PATCH) and its marker block."""
    store = store_for(azure, object_prefix="up")
    await store._ensure_container()
    upload_id = uuid.uuid4().hex
    data = os.urandom(2 * BLOCK + 3000)
    tusd_info = {
        "ID": upload_id, "Size": len(data), "SizeIsDeferred": False, "Offset": 0, "MetaData": {"filename": "t"},
        "IsPartial": False, "IsFinal": False, "PartialUploads": None,
        "Storage": {"Type": "azurestore", "Container": azure.pytusd_container, "Key": f"up/{upload_id}"},
    }
    azure.get_blob_client(azure.pytusd_container, f"up/{upload_id}.info").upload_blob(json.dumps(tusd_info))
    stage(azure, f"up/{upload_id}", base64.b64encode(struct.pack("<I", 0x7FFFFFFF)).decode(), b"\0")
    stage(azure, f"up/{upload_id}", base64.b64encode(struct.pack("<I", 0)).decode(), data[:1000])
    stage(azure, f"up/{upload_id}", base64.b64encode(struct.pack("<I", 1)).decode(), data[1000 : BLOCK + 1000])
    upload = await store.get(upload_id)
    assert (await upload.info()).offset == BLOCK + 1000
    await upload.write(BLOCK + 1000, chunks_of(data[BLOCK + 1000 :]))
    blob = azure.get_blob_client(azure.pytusd_container, f"up/{upload_id}")
    listing = blob._client.block_blob.get_block_list(list_type="all")
    assert {len(base64.b64decode(b.name)) for b in listing.committed_blocks} == {4}  # tusd's scheme goes on
    assert await read_all(await store.get(upload_id)) == data  # unfinished: read from the committed blocks
    await upload.finish()
    assert await read_all(await store.get(upload_id)) == data

    # A finished tusd upload: a committed blob, nothing staged.
    finished_id = uuid.uuid4().hex
    tusd_info.update(ID=finished_id, Size=5)
    azure.get_blob_client(azure.pytusd_container, f"up/{finished_id}.info").upload_blob(json.dumps(tusd_info))
    azure.get_blob_client(azure.pytusd_container, f"up/{finished_id}").upload_blob(b"hello")
    done = await store.get(finished_id)
    assert (await done.info()).offset == 5 and await read_all(done) == b"hello"


async def test_through_the_app(azure, client_factory):
    from pytusd import MemoryLocker

    store = store_for(azure)
    client = client_factory(store=store, locker=MemoryLocker())
    r = await client.options("/files/")
    extensions = set(r.headers["tus-extension"].split(","))
    assert {"creation", "termination", "creation-defer-length", "concatenation"} <= extensions
    data = os.urandom(2 * BLOCK + 5)
    url = await create(client, len(data), **{"Upload-Metadata": "filename dGVzdC50eHQ="})
    assert (await patch(client, url, 0, data[:MIB])).status_code == 204
    r = await client.get(url, headers=TUS)  # unfinished: the bytes stored so far
    assert r.status_code == 200 and r.content == data[:MIB] and r.headers["content-length"] == str(MIB)
    r = await client.get(url, headers={**TUS, "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    r = await patch(client, url, MIB, data[MIB:])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    r = await client.head(url, headers=TUS)
    assert r.headers["upload-offset"] == str(len(data))
    r = await client.get(url, headers={**TUS, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = await client.get(url, headers=TUS)
    assert r.content == data and "test.txt" in r.headers["content-disposition"] and r.headers.get("etag")
    assert (await client.delete(url, headers=TUS)).status_code == 204
    assert (await client.head(url, headers=TUS)).status_code == 404

    # Deferred length through the app.
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    assert (await patch(client, url, 0, b"12345")).status_code == 204
    r = await patch(client, url, 5, b"678", **{"Upload-Length": "8"})
    assert r.status_code == 204 and r.headers["upload-offset"] == "8"
    assert (await client.get(url, headers=TUS)).content == b"12345678"


async def test_from_options_reads_the_environment(azure_endpoint, monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"):
        AzureStore.from_options("c")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    with pytest.raises(ValueError, match="credentials"):
        AzureStore.from_options("c")  # a key is needed too
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    assert AzureStore.from_options("c").service.url.startswith("https://devstoreaccount1.blob.core.windows.net")
    with pytest.raises(ValueError, match="access tier"):
        AzureStore.from_options("c", blob_access_tier="lukewarm")
    with pytest.raises(ValueError, match="access type"):
        AzureStore.from_options("c", container_access_type="public")

    # Account and key with an endpoint: the container is created on first use, with its access type.
    container = f"opts-{uuid.uuid4().hex[:8]}"
    store = AzureStore.from_options(
        container, endpoint=azure_endpoint, object_prefix="up/", container_access_type="blob", blob_access_tier="cool"
    )
    assert repr(store) == f"AzureStore({container!r}, prefix='up/', endpoint={store.service.url!r})"
    upload = await store.create(UploadInfo(size=3))
    await upload.write(0, chunks_of(b"abc"))
    await upload.finish()
    service = service_for(azure_endpoint)
    container_client = service.get_container_client(container)
    assert container_client.get_container_properties().public_access == "blob"
    assert {b.name for b in container_client.list_blobs()} == {f"up/{upload.id}", f"up/{upload.id}.info"}
    assert service.get_blob_client(container, f"up/{upload.id}").get_blob_properties().blob_tier == "Cool"
    await AzureStore.from_options(container, endpoint=azure_endpoint, container_access_type="blob").create(
        UploadInfo(size=1)
    )  # the container exists already: fine

    # A connection string wins over account and key.
    monkeypatch.setenv("AZURE_STORAGE_KEY", "bm90IHRoZSBrZXk=")
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={azure_endpoint};",
    )
    again = AzureStore.from_options(container, object_prefix="up/")
    assert await read_all(await again.get(upload.id)) == b"abc"
    container_client.delete_container()


def test_the_cli_flags_build_the_azure_store(tmp_path, monkeypatch):
    from pytusd.server.cli.compose import config_from_args
    from pytusd.server.cli.flags import build_parser, normalise_argv

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    argv = ["-azure-storage", "c", "-azure-endpoint", "http://127.0.0.1:9/devstoreaccount1",
            "-azure-object-prefix", "up/", "-azure-blob-access-tier", "archive", "--upload-dir", str(tmp_path)]
    store = config_from_args(build_parser().parse_args(normalise_argv(argv))).store
    assert isinstance(store, AzureStore)
    assert store.container == "c" and store.blob_name("x") == "up/x" and store.blob_access_tier == "Archive"
    assert store.service.url.startswith("http://127.0.0.1:9/devstoreaccount1")


# --- expiration: the last change, and nothing left of an expired upload -----------------------------------------


def listed(azure) -> set[str]:
    """Every blob in the container, those that hold only uncommitted blocks too."""
    container = azure.get_container_client(azure.pytusd_container)
    return {b.name for b in container.list_blobs(include=["uncommittedblobs"])}


async def test_the_last_change_is_the_newest_of_blob_part_and_info(azure):
    store = store_for(azure)
    store.plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)  # short PATCHes go to .part
    assert capabilities(store).expire and capabilities(store).readable_while_incomplete
    upload = await store.create(UploadInfo(size=4 * MIB))
    created = await (await store.get(upload.id)).modified_time()
    info_modified = azure.get_blob_client(azure.pytusd_container, f"{upload.id}.info").get_blob_properties()
    assert created == info_modified.last_modified.timestamp()
    await asyncio.sleep(1.1)  # Last-Modified has whole seconds
    await upload.write(0, chunks_of(os.urandom(MIB + 10)))  # a committed block and a .part
    part = azure.get_blob_client(azure.pytusd_container, f"{upload.id}.part").get_blob_properties()
    blob = azure.get_blob_client(azure.pytusd_container, upload.id).get_blob_properties()
    after_write = await (await store.get(upload.id)).modified_time()
    assert after_write > created
    assert after_write == max(part.last_modified.timestamp(), blob.last_modified.timestamp())
    await asyncio.sleep(1.1)
    current = await store.get(upload.id)
    await current.write(MIB + 10, chunks_of(b"x" * 1000))  # only .part changes
    part = azure.get_blob_client(azure.pytusd_container, f"{upload.id}.part").get_blob_properties()
    assert await (await store.get(upload.id)).modified_time() == part.last_modified.timestamp() > after_write


async def test_expire_removes_committed_and_uncommitted_blocks_info_and_part(azure, azure_endpoint):
    store = store_for(azure)
    store.plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)
    upload = await store.create(UploadInfo(size=4 * MIB))
    await upload.write(0, chunks_of(os.urandom(MIB + 10)))  # block 1 committed, 10 bytes in .part
    stage(azure, upload.id, block_id(2, MIB), b"y" * MIB)  # left uncommitted by a request that "crashed"
    other = await store.create(UploadInfo(size=5))  # staged blocks only: its blob has no committed block
    assert listed(azure) == {upload.id, f"{upload.id}.info", f"{upload.id}.part", other.id, f"{other.id}.info"}
    for expiring in (await store.get(upload.id), await store.get(other.id)):
        await expiring.expire()
    assert listed(azure) == {f"{upload.id}.expired", f"{other.id}.expired"}
    fresh = store_for(azure, azure_endpoint)
    for upload_id in (upload.id, other.id):
        with pytest.raises(errors.TusError) as gone:
            await fresh.get(upload_id)
        assert gone.value.status == 410 and gone.value.code == "ERR_UPLOAD_EXPIRED"
    assert [i async for i in fresh.upload_ids()] == []
    assert await fresh.forget_expired(0) == 0  # written after 0: kept
    assert await fresh.forget_expired(time.time() + 2) == 2
    assert listed(azure) == set()
    with pytest.raises(errors.TusError) as forgotten:
        await fresh.get(upload.id)
    assert forgotten.value.status == 404


# --- concatenation: Put Block From URL where the service has it, else streamed -----------------------------------


async def make_partials(store, datas, finish=True):
    partials = []
    for data in datas:
        partial = await store.create(UploadInfo(size=len(data), is_partial=True))
        await partial.write(0, chunks_of(data))
        if finish:
            await partial.finish()
        partials.append(await store.get(partial.id))
    return partials


class CountingCopies:
    """Counts Put Block From URL requests (the SDK's call, passed on unchanged to the service)."""

    def __init__(self, monkeypatch):
        from azure.storage.blob._generated.operations import BlockBlobOperations

        self.calls = 0
        original = BlockBlobOperations.stage_block_from_url

        def counting(operations, *args, **kwargs):
            self.calls += 1
            return original(operations, *args, **kwargs)

        monkeypatch.setattr(BlockBlobOperations, "stage_block_from_url", counting)


async def test_concatenation_streams_where_put_block_from_url_is_501(azure, monkeypatch):
    """Azurite 3.35 (the suite's) answers Put Block From URL with 501: the first concatenation tries it once,
    streams instead and remembers; the next one does not try again."""
    copies = CountingCopies(monkeypatch)
    store = store_for(azure, blob_access_tier="cool")
    assert store.copy_from_url is None
    datas = [os.urandom(BLOCK + 5), b"", os.urandom(1000)]
    partials = await make_partials(store, datas)
    final = await store.create(UploadInfo(size=sum(map(len, datas)), is_final=True, metadata={"filetype": "a/b"}))
    await final.concat(partials)
    assert copies.calls == 1 and store.copy_from_url is False
    assert (await final.info()).offset == sum(map(len, datas))
    await final.finish()
    assert await read_all(await store.get(final.id)) == b"".join(datas)
    properties = azure.get_blob_client(azure.pytusd_container, final.id).get_blob_properties()
    assert properties.blob_tier == "Cool" and properties.content_settings.content_type == "a/b"
    assert properties.metadata == {}
    again = await store.create(UploadInfo(size=BLOCK + 5, is_final=True))
    await again.concat(partials[:1])
    assert copies.calls == 1  # remembered: streamed at once
    await again.finish()
    assert await read_all(await store.get(again.id)) == datas[0]


@pytest.fixture
def azure_next(azure_next_endpoint):
    service = service_for(azure_next_endpoint)
    container = f"pytusd-{uuid.uuid4().hex[:12]}"
    service.pytusd_container = container  # type: ignore[attr-defined]
    yield service
    try:
        service.delete_container(container)
    except ResourceNotFoundError:
        pass


async def test_concatenation_by_put_block_from_url(azure_next, monkeypatch):
    """Azurite 3.37 has Put Block From URL: the final's blocks are copied by the service from the partials' blobs
    (a finished one, an empty one, one complete but not finished yet), in ranges of at most the largest block;
    no partial byte passes through pytusd; repeating the concatenation changes nothing."""
    import pytusd.stores.azure as azure_module

    async def no_streaming(final, partials):
        raise AssertionError("streamed although Put Block From URL works")

    copies = CountingCopies(monkeypatch)
    monkeypatch.setattr(azure_module, "concat_by_streaming", no_streaming)
    store = store_for(azure_next, blob_access_tier="cool")
    datas = [os.urandom(BLOCK + 5), b"", os.urandom(1000)]
    partials = await make_partials(store, datas[:2]) + await make_partials(store, datas[2:], finish=False)
    store.plan = BlockPlan(block_size=MIB, max_block_size=MIB)  # copies of at most 1 MiB: five for the first
    total = sum(map(len, datas))
    final = await store.create(UploadInfo(size=total, is_final=True, metadata={"filetype": "text/csv"}))
    assert isinstance(final, Concatenatable)
    await final.concat(partials)
    assert store.copy_from_url is True and copies.calls == 6
    info = await final.info()
    assert info.offset == total and info.is_complete
    await final.finish()  # the concatenation's commit finished it already
    assert await read_all(await store_for(azure_next).get(final.id)) == b"".join(datas)
    committed = staged(azure_next, final.id, "committed")
    assert [(n, start, size) for n, start, size in committed] == [
        (1, 0, MIB), (2, MIB, MIB), (3, 2 * MIB, MIB), (4, 3 * MIB, MIB), (5, 4 * MIB, 5), (6, BLOCK + 5, 1000)
    ]
    properties = azure_next.get_blob_client(azure_next.pytusd_container, final.id).get_blob_properties()
    assert properties.blob_tier == "Cool" and properties.content_settings.content_type == "text/csv"
    assert properties.metadata == {} and properties.size == total
    again = await store_for(azure_next).get(final.id)
    await again.concat(partials)  # repeated: the final is finished, nothing is copied again
    assert copies.calls == 6
    assert await read_all(await store_for(azure_next).get(final.id)) == b"".join(datas)


async def test_a_failed_copy_leaves_nothing_wrong_and_a_retry_completes(azure_next, monkeypatch):
    store = store_for(azure_next)
    store.plan = BlockPlan(block_size=MIB, max_block_size=MIB)
    datas = [os.urandom(3 * MIB + 7), os.urandom(2 * MIB)]
    partials = await make_partials(store, datas)
    final = await store.create(UploadInfo(size=5 * MIB + 7, is_final=True))
    original = store._send
    sent = 0

    async def failing(fn, *args, **kwargs):
        nonlocal sent
        if getattr(fn, "__name__", "") == "stage_block_from_url":
            sent += 1
            if sent == 4:
                raise OSError("connection reset")
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(store, "_send", failing)
    with pytest.raises(errors.TusError) as failed:
        await final.concat(partials)
    assert failed.value.status == 500
    assert azure_next.get_blob_client(azure_next.pytusd_container, final.id).exists() is False  # nothing committed
    monkeypatch.setattr(store, "_send", original)
    retry = await store_for(azure_next).get(final.id)
    await retry.concat(partials)
    assert (await retry.info()).is_complete
    await retry.finish()
    assert await read_all(await store_for(azure_next).get(final.id)) == b"".join(datas)


@pytest.mark.parametrize("service", ["azure", "azure_next"], ids=["streamed-azurite-3.35", "copied-azurite-3.37"])
async def test_concatenation_unfinished_through_the_app(request, service, client_factory, monkeypatch):
    """concatenation-unfinished: the final is made while its partials are still unfinished and is concatenated when
    the last one completes, then reads back whole, from a new app (another process); its Content-Type is its own."""
    from pytusd import MemoryLocker

    copies = CountingCopies(monkeypatch)
    azure = request.getfixturevalue(service)
    client = client_factory(store=store_for(azure), locker=MemoryLocker())
    data = os.urandom(BLOCK + 2000)
    pieces = (data[:BLOCK + 1000], data[BLOCK + 1000 :])
    parts = [await create(client, len(piece), **{"Upload-Concat": "partial"}) for piece in pieces]
    r = await client.post("/files/", headers={
        **TUS, "Upload-Concat": "final;" + " ".join(parts), "Upload-Metadata": "filetype dGV4dC9wbGFpbg=="})
    assert r.status_code == 201
    final_url = r.headers["location"]
    assert "upload-offset" not in (await client.head(final_url, headers=TUS)).headers  # waits for its partials
    for url, piece in zip(parts, pieces, strict=True):
        assert (await patch(client, url, 0, piece)).status_code == 204
    other = client_factory(store=store_for(azure), locker=MemoryLocker())
    r = await other.head(final_url, headers=TUS)
    assert r.status_code == 200 and r.headers["upload-offset"] == str(len(data))
    r = await other.get(final_url, headers=TUS)
    assert r.status_code == 200 and r.content == data
    final_id = final_url.rstrip("/").rsplit("/", 1)[1]
    properties = azure.get_blob_client(azure.pytusd_container, final_id).get_blob_properties()
    assert properties.content_settings.content_type == "text/plain" and properties.metadata == {}
    assert copies.calls == (2 if service == "azure_next" else 1)  # 3.35: tried once (501), then streamed


# --- integrity: every block carries its MD5 -------------------------------------------------------------------------


async def test_a_block_whose_md5_does_not_match_is_refused_by_azure(azure, azure_endpoint, monkeypatch):
    """Each Put Block carries the block's MD5 (transactional Content-MD5): here block 2's is made wrong, as if its
    bytes had been damaged on the way; Azurite refuses it, the client gets a 500 in one line, and only block 1
    counts, for another process too. The same bytes with their true MD5 are then accepted."""
    import hashlib

    import pytusd.stores.azure as azure_module

    true_md5 = azure_module._md5_of
    seen = []

    def damaged(spool, size):
        seen.append(size)
        digest = true_md5(spool, size)
        return hashlib.md5(b"other bytes").digest() if len(seen) == 2 else digest

    monkeypatch.setattr(azure_module, "_md5_of", damaged)
    store = store_for(azure, concurrent_block_uploads=1)
    data = os.urandom(2 * BLOCK + 10)
    upload = await store.create(UploadInfo(size=len(data)))
    with pytest.raises(errors.TusError) as refused:
        await upload.write(0, chunks_of(data))
    # Azure's code is Md5Mismatch; Azurite 3.35 answers InvalidOperation "Provided contentMD5 doesn't match."
    message = str(refused.value)
    assert refused.value.status == 500 and ("Md5Mismatch" in message or "contentMD5 doesn't match" in message)
    assert "\n" not in str(refused.value)
    fresh = await store_for(azure, azure_endpoint).get(upload.id)
    assert (await fresh.info()).offset == BLOCK
    monkeypatch.setattr(azure_module, "_md5_of", true_md5)
    await fresh.write(BLOCK, chunks_of(data[BLOCK:]))
    await fresh.finish()
    assert await read_all(await store.get(upload.id)) == data


async def test_a_reader_whose_part_blob_was_replaced_meanwhile_reads_the_blob(azure, azure_endpoint):
    """A GET loads the state (bytes in .part), then another request goes on before the bytes are streamed: it puts
    them into a committed block and replaces .part. The reader notices (.part's ETag) and reads them from the blob."""
    plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)  # short PATCHes wait in .part
    store = store_for(azure)
    store.plan = plan
    data = os.urandom(4 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data[:1000]))
    reader = await store.get(upload.id)
    assert (await reader.info()).offset == 1000  # loaded: 1000 bytes in .part
    other = store_for(azure, azure_endpoint)
    other.plan = plan
    writer = await other.get(upload.id)
    await writer.write(1000, chunks_of(data[1000 : MIB + 2000]))  # block 1 committed, a new .part of 2000 bytes
    assert staged(azure, upload.id, "committed") == [(1, 0, MIB)]
    assert await read_all(reader) == data[:1000]
    assert await read_all(await store.get(upload.id)) == data[: MIB + 2000]


async def test_a_process_dying_between_the_commit_and_the_part_blob_keeps_the_offset_truthful(azure, monkeypatch):
    """A PATCH commits its blocks, then writes the new .part (here: it dies before) or removes the old one (here:
    it dies before): each time another process counts exactly what is readable, reads it back, and goes on."""
    plan = BlockPlan(block_size=MIB, max_blocks=4, max_blob_size=4 * MIB)  # remainders wait in .part
    store = store_for(azure)
    store.plan = plan
    data = os.urandom(4 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))

    async def dies(*args, **kwargs):
        raise OSError("the process died here")

    monkeypatch.setattr(store, "_put_tail", dies)
    with pytest.raises(errors.TusError):
        await upload.write(0, chunks_of(data[: MIB + 500]))  # block 1 committed, the 500 bytes for .part lost
    monkeypatch.undo()
    fresh = store_for(azure)
    fresh.plan = plan
    again = await fresh.get(upload.id)
    assert (await again.info()).offset == MIB and await read_all(again) == data[:MIB]
    await again.write(MIB, chunks_of(data[MIB : MIB + 300]))  # 300 bytes in .part
    assert f"{upload.id}.part" in names(azure)

    later = store_for(azure)
    later.plan = plan
    monkeypatch.setattr(later, "_delete_quietly", dies)  # the .part is not removed after its bytes were committed
    current = await later.get(upload.id)
    with pytest.raises(errors.TusError):
        await current.write(MIB + 300, chunks_of(data[MIB + 300 : 2 * MIB]))
    monkeypatch.undo()
    assert f"{upload.id}.part" in names(azure)  # stale: it starts where block 1 ends, the blocks end later
    resumed = await store_for(azure).get(upload.id)
    resumed._store.plan = plan
    assert (await resumed.info()).offset == 2 * MIB and await read_all(resumed) == data[: 2 * MIB]
    await resumed.write(2 * MIB, chunks_of(data[2 * MIB :]))
    await resumed.finish()
    assert await read_all(await store.get(upload.id)) == data
    assert f"{upload.id}.part" not in names(azure)


async def test_a_copy_the_service_refuses_is_streamed_instead(azure_next, azure_next_endpoint, monkeypatch):
    """A store signed in with a SAS (no account key) hands Azure its own SAS for the sources. Azurite 3.37 answers
    Put Block From URL authorized by an account SAS with 500 (its account-SAS table has no entry for the operation),
    which stands here for any refusal: the first copy of the concatenation fails, the partials are streamed
    instead, and nothing is remembered (a later concatenation tries again)."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    copies = CountingCopies(monkeypatch)
    sas = generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    service = BlobServiceClient(azure_next_endpoint, credential=sas, retry_total=0)
    store = AzureStore(azure_next.pytusd_container, service, block_size=BLOCK)
    datas = [os.urandom(1000), os.urandom(2000)]
    partials = await make_partials(store, datas)
    assert "sig=" in partials[0].blob.url and store._source_url(partials[0].blob) == partials[0].blob.url
    for _ in range(2):
        final = await store.create(UploadInfo(size=3000, is_final=True))
        await final.concat(partials)
        await final.finish()
        assert await read_all(await store.get(final.id)) == b"".join(datas)
    assert copies.calls == 2 and store.copy_from_url is None


async def test_a_reader_never_commits_over_a_patch_that_goes_on(azure, azure_endpoint, monkeypatch):
    """A crashed request left block 2 uncommitted. A GET loads the state under the upload's lock and lets go of it;
    a PATCH takes the lock and stages block 3 while the GET streams. The GET must not commit the blocks it knew of
    then (a commit drops every uncommitted block not named, block 3 with them): the commit it needs is made while it
    holds the lock (``prepare_read``), so the PATCH's own commit finds its block and succeeds."""
    store = store_for(azure)
    data = os.urandom(4 * BLOCK)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data[:BLOCK]))
    stage(azure, upload.id, block_id(2, BLOCK), data[BLOCK : 2 * BLOCK])  # the crashed request's block
    reading = await store.get(upload.id)
    assert (await reading.info()).offset == 2 * BLOCK
    await reading.prepare_read()  # what GET does while it holds the lock
    assert staged(azure, upload.id, "committed") == [(1, 0, BLOCK), (2, BLOCK, BLOCK)]
    stream = reading.reader(0, 2 * BLOCK)  # streamed after the lock is let go

    other = store_for(azure, azure_endpoint)
    original = other._stage_block
    read: list[bytes] = []

    async def stage_then_let_the_reader_run(upload_, tusd, number, start, spool, size):
        block = await original(upload_, tusd, number, start, spool, size)
        if number == 3:
            read.extend([chunk async for chunk in stream])
        return block

    monkeypatch.setattr(other, "_stage_block", stage_then_let_the_reader_run)
    writer = await other.get(upload.id)
    assert await writer.write(2 * BLOCK, chunks_of(data[2 * BLOCK : 3 * BLOCK])) == BLOCK
    assert b"".join(read) == data[: 2 * BLOCK]
    assert staged(azure, upload.id, "committed") == [(1, 0, BLOCK), (2, BLOCK, BLOCK), (3, 2 * BLOCK, BLOCK)]
    assert (await (await store.get(upload.id)).info()).offset == 3 * BLOCK


async def test_get_commits_a_crashed_requests_blocks_while_it_holds_the_lock(azure, client_factory, monkeypatch):
    """Through the app: the GET of an unfinished upload whose last block a crashed request left uncommitted commits
    it before the handler lets go of the upload's lock (:meth:`AzureUpload.prepare_read`), and serves it."""
    from pytusd import MemoryLocker

    store = store_for(azure)
    locker = MemoryLocker()
    client = client_factory(store=store, locker=locker)
    data = os.urandom(3 * BLOCK)
    url = await create(client, len(data))
    upload_id = url.rsplit("/", 1)[1]
    assert (await patch(client, url, 0, data[:BLOCK])).status_code == 204
    stage(azure, upload_id, block_id(2, BLOCK), data[BLOCK : 2 * BLOCK])
    original = store._commit_progress
    held: list[bool] = []

    async def commit_progress(upload, state, lazily=False):
        lock = await locker.try_acquire(upload_id)
        held.append(lock is None)
        if lock is not None:
            await lock.release()
        await original(upload, state, lazily)

    monkeypatch.setattr(store, "_commit_progress", commit_progress)
    r = await client.get(url, headers=TUS)
    assert r.status_code == 200 and r.content == data[: 2 * BLOCK]
    assert held == [True]
    assert staged(azure, upload_id, "committed") == [(1, 0, BLOCK), (2, BLOCK, BLOCK)]
