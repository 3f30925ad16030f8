"""S3Store against a real Ceph RADOS Gateway (started by the suite), plus the part-planning arithmetic on its own."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest

from pytusd import errors
from pytusd.info import UploadInfo
from pytusd.stores.s3 import MAX_OBJECT_SIZE, MIB, PartPlan, S3Store, make_client

from tests.conftest import TUS, create, patch

PART = 5 * MIB  # Ceph, like AWS, refuses parts under 5 MiB but the last


# --- the arithmetic ------------------------------------------------------------------------------------------------


def simulate(plan: PartPlan, length: int | None, patches: list[int]) -> int:
    """How many parts an upload takes when the client sends PATCHes of these sizes (the S3Store's rules)."""
    parts = tail = offset = 0
    for size in patches:
        pending = tail + size
        while pending >= plan.size_of(parts + 1, length):
            pending -= plan.size_of(parts + 1, length)
            offset += plan.size_of(parts + 1, length)
            parts += 1
        tail = 0
        if pending and plan.remainder_is_piece(parts + 1, pending, offset + pending, length):
            parts += 1
            offset += pending
        else:
            tail = pending
    if tail:  # finish uploads the tail as the last part
        parts += 1
    return parts


def test_known_length_never_needs_more_than_10000_parts():
    plan = PartPlan()
    for length in (1, 50 * MIB, 500 * 1024 * MIB, MAX_OBJECT_SIZE):
        assert plan.size_of(1, length) * plan.max_pieces >= length
        assert plan.size_of(1, length) >= plan.min_size


def test_deferred_length_capacity_reaches_the_largest_object():
    plan = PartPlan()
    assert plan.capacity(1, None) >= MAX_OBJECT_SIZE
    assert plan.size_of(1, None) == plan.preferred_size
    assert plan.size_of(1001, None) == 2 * plan.preferred_size
    assert plan.size_of(10_000, None) <= plan.max_size


def test_many_small_patches_stay_under_the_part_limit():
    # tusd #1247: 5 MiB PATCHes of a 60 GiB file made 12,288 parts, and S3 refused the 10,001st.
    plan = PartPlan()
    length = 60 * 1024 * MIB
    patches = [5 * MIB] * (length // (5 * MIB))
    assert simulate(plan, length, patches) <= plan.max_pieces
    # Scaled down so that it runs fast: 100-part limit, 1 KiB minimum, PATCHes at exactly the minimum.
    small = PartPlan(part_size=10_240, min_part_size=1024, max_parts=100, max_object_size=10**7)
    length = 500 * 1024
    assert simulate(small, length, [1024] * 500) <= 100
    assert simulate(small, None, [1024] * 500) <= 100
    # And tiny PATCHes below the minimum ride in the tail until a part is full.
    assert simulate(small, length, [100] * 5120) <= 100


def test_short_parts_are_used_while_there_is_room():
    plan = PartPlan()
    assert plan.remainder_is_piece(1, 5 * MIB, 5 * MIB, 100 * MIB)
    assert not plan.remainder_is_piece(1, 4 * MIB, 4 * MIB, 100 * MIB)  # below S3's minimum
    assert plan.remainder_is_piece(1, 1, 1, 1)  # the last bytes are the last part, whatever their size
    full = PartPlan(part_size=10, min_part_size=5, max_parts=10, max_object_size=1000)
    assert not full.remainder_is_piece(1, 5, 5, 100)  # 9 parts of 10 cannot hold the other 95 bytes


def test_a_length_beyond_what_s3_holds_is_refused():
    with pytest.raises(errors.TusError) as info:
        PartPlan().check_length(MAX_OBJECT_SIZE + 1)
    assert info.value.status == 413


# --- against Ceph RADOS Gateway ------------------------------------------------------------------------------------


@pytest.fixture
def s3(s3_endpoint):
    from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY

    os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    client = make_client(endpoint=s3_endpoint)
    bucket = f"pytusd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.pytusd_bucket = bucket  # type: ignore[attr-defined]
    yield client
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


def store_for(s3, client=None, **options) -> S3Store:
    """A store on the test's bucket; another ``client`` stands for another process."""
    options.setdefault("part_size", PART)
    options.setdefault("min_part_size", PART)
    return S3Store(s3.pytusd_bucket, client or s3, **options)


def keys(client) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=client.pytusd_bucket).get("Contents", [])}


async def chunks_of(data: bytes, size: int = 1 << 20):
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(upload, start=0, end=None) -> bytes:
    return b"".join([block async for block in upload.reader(start, end)])


async def test_upload_in_patches_resumes_in_another_process_and_finishes(s3):
    data = os.urandom(13 * MIB + 12345)
    store = store_for(s3)
    upload = await store.create(UploadInfo(size=len(data), metadata={"filename": "a.bin", "filetype": "image/png"}))
    info = await upload.info()
    object_id, _, multipart_id = info.id.rpartition("+")
    assert object_id and multipart_id and info.storage["Type"] == "s3store"
    assert f"{object_id}.info" in keys(s3)

    # 6 MiB: one short part (over the minimum) ... then 1 MiB: stays in the tail object.
    assert await upload.write(0, chunks_of(data[: 6 * MIB])) == 6 * MIB
    assert await upload.write(6 * MIB, chunks_of(data[6 * MIB : 7 * MIB])) == MIB
    assert f"{object_id}.part" in keys(s3)

    # Another process (a new store, nothing cached) sees the same state and goes on.
    other = store_for(s3, make_client(endpoint=s3.meta.endpoint_url))
    resumed = await other.get(info.id)
    assert (await resumed.info()).offset == 7 * MIB
    assert await resumed.write(7 * MIB, chunks_of(data[7 * MIB :])) == len(data) - 7 * MIB
    assert f"{object_id}.part" not in keys(s3)  # the tail went into a part
    assert (await resumed.info()).is_complete
    await resumed.finish()

    again = await store.get(info.id)
    assert (await again.info()).offset == len(data)
    assert hashlib.sha256(await read_all(again)).digest() == hashlib.sha256(data).digest()
    assert await read_all(again, 100, 200) == data[100:200]
    head = s3.head_object(Bucket=s3.pytusd_bucket, Key=object_id)
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["filename"] == "a.bin"
    assert json.loads(s3.get_object(Bucket=s3.pytusd_bucket, Key=f"{object_id}.info")["Body"].read())["ID"] == info.id


async def test_interrupted_body_keeps_what_arrived(s3):
    store = store_for(s3)
    upload = await store.create(UploadInfo(size=20 * MIB))
    data = os.urandom(20 * MIB)

    async def broken():
        yield data[: 3 * MIB]
        yield data[3 * MIB : 7 * MIB]
        raise errors.ERR_UNEXPECTED_EOF()

    with pytest.raises(errors.TusError) as info:
        await upload.write(0, broken())
    assert info.value.code == "ERR_UNEXPECTED_EOF"
    fresh = await store.get((await upload.info()).id)
    assert (await fresh.info()).offset == 7 * MIB
    await fresh.write(7 * MIB, chunks_of(data[7 * MIB :]))
    await fresh.finish()
    assert await read_all(fresh) == data


async def test_a_stale_tail_is_not_counted_twice(s3):
    """A crash between uploading the part that holds the tail's bytes and deleting the tail object."""
    store = store_for(s3)
    data = os.urandom(8 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))
    upload_id = (await upload.info()).id
    await upload.write(0, chunks_of(data[:MIB]))  # tail object, starting at 0
    object_id = upload.object_id
    tail = s3.get_object(Bucket=s3.pytusd_bucket, Key=f"{object_id}.part")
    assert tail["Metadata"]["pytusd-tail-offset"] == "0"
    # The "crashed" request had put the tail plus 5 MiB into part 1:
    s3.upload_part(
        Bucket=s3.pytusd_bucket, Key=object_id, UploadId=upload.multipart_id, PartNumber=1, Body=data[: 6 * MIB]
    )
    fresh = await store.get(upload_id)
    assert (await fresh.info()).offset == 6 * MIB
    await fresh.write(6 * MIB, chunks_of(data[6 * MIB :]))
    await fresh.finish()
    assert await read_all(fresh) == data


async def test_parts_after_a_gap_do_not_count(s3):
    store = store_for(s3)
    upload = await store.create(UploadInfo(size=20 * MIB))
    s3.upload_part(
        Bucket=s3.pytusd_bucket, Key=upload.object_id, UploadId=upload.multipart_id, PartNumber=2, Body=b"x" * PART
    )
    fresh = await store.get((await upload.info()).id)
    assert (await fresh.info()).offset == 0
    data = os.urandom(20 * MIB)
    await fresh.write(0, chunks_of(data))
    await fresh.finish()
    assert await read_all(fresh) == data


async def test_deferred_length_and_tail_finished_by_finish(s3):
    store = store_for(s3)
    upload = await store.create(UploadInfo(size_is_deferred=True))
    data = os.urandom(6 * MIB + 10)
    await upload.write(0, chunks_of(data[: 6 * MIB]))
    await upload.write(6 * MIB, chunks_of(data[6 * MIB :]))  # 10 bytes: the tail
    fresh = await store.get((await upload.info()).id)
    assert (await fresh.info()).size_is_deferred and (await fresh.info()).offset == len(data)
    await fresh.declare_length(len(data))
    assert (await fresh.info()).is_complete
    await fresh.finish()
    assert await read_all(await store.get(fresh.id)) == data
    assert f"{fresh.object_id}.part" not in keys(s3)


async def test_empty_upload(s3):
    store = store_for(s3)
    upload = await store.create(UploadInfo(size=0))
    await upload.finish()
    assert await read_all(await store.get(upload.id)) == b""


async def test_terminate_removes_everything(s3):
    store = store_for(s3)
    upload = await store.create(UploadInfo(size=10 * MIB))
    await upload.write(0, chunks_of(os.urandom(MIB)))
    await upload.terminate()
    assert keys(s3) == set()
    with pytest.raises(errors.TusError) as info:
        await store.get(upload.id)
    assert info.value.status == 404


async def test_unknown_or_forged_ids_are_not_found(s3):
    store = store_for(s3)
    upload = await store.create(UploadInfo(size=10))
    for bad in ("nope", "+x", "x+", f"{upload.object_id}+forged", f"other+{upload.multipart_id}"):
        with pytest.raises(errors.TusError) as info:
            await store.get(bad)
        assert info.value.status == 404, bad


@pytest.mark.parametrize("partial_size", [PART + 1, 1000], ids=["part-copy", "streamed"])
async def test_concatenation(s3, partial_size):
    store = store_for(s3)
    datas = [os.urandom(partial_size) for _ in range(3)]
    partials = []
    for data in datas:
        partial = await store.create(UploadInfo(size=len(data), is_partial=True))
        await partial.write(0, chunks_of(data))
        await partial.finish()
        partials.append(await store.get(partial.id))
    final = await store.create(UploadInfo(size=sum(map(len, datas)), is_final=True))
    await final.concat(partials)
    assert (await final.info()).is_complete
    await final.finish()
    assert await read_all(await store.get(final.id)) == b"".join(datas)


async def test_a_bucket_written_by_tusd_is_served(s3):
    """tusd's layout: its .info JSON, a multipart upload with parts, and a .part tail without our metadata."""
    bucket, object_id = s3.pytusd_bucket, uuid.uuid4().hex
    multipart_id = s3.create_multipart_upload(Bucket=bucket, Key=object_id)["UploadId"]
    upload_id = f"{object_id}+{multipart_id}"
    data = os.urandom(12 * MIB)
    s3.upload_part(Bucket=bucket, Key=object_id, UploadId=multipart_id, PartNumber=1, Body=data[: 5 * MIB])
    s3.put_object(Bucket=bucket, Key=f"{object_id}.part", Body=data[5 * MIB : 6 * MIB])
    tusd_info = {
        "ID": upload_id, "Size": len(data), "SizeIsDeferred": False, "Offset": 0, "MetaData": {"filename": "t"},
        "IsPartial": False, "IsFinal": False, "PartialUploads": None,
        "Storage": {"Type": "s3store", "Bucket": bucket, "Key": object_id},
    }
    s3.put_object(Bucket=bucket, Key=f"{object_id}.info", Body=json.dumps(tusd_info).encode())
    store = store_for(s3)
    upload = await store.get(upload_id)
    assert (await upload.info()).offset == 6 * MIB
    await upload.write(6 * MIB, chunks_of(data[6 * MIB :]))
    await upload.finish()
    assert await read_all(await store.get(upload_id)) == data


async def test_presigned_parts_without_content_hashes(s3):
    store = store_for(s3, disable_content_hashes=True)
    data = os.urandom(11 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data))
    await upload.finish()
    assert await read_all(await store.get(upload.id)) == data


async def test_through_the_app(s3, client_factory):
    from pytusd import MemoryLocker

    store = store_for(s3)
    client = client_factory(store=store, locker=MemoryLocker())
    r = await client.options("/files/")
    extensions = r.headers["tus-extension"].split(",")
    assert {"creation", "termination", "concatenation", "creation-defer-length"} <= set(extensions)
    data = os.urandom(7 * MIB)
    url = await create(client, len(data), **{"Upload-Metadata": "filename dGVzdC50eHQ="})
    assert (await patch(client, url, 0, data[:MIB])).status_code == 204
    r = await client.get(url, headers=TUS)
    assert r.status_code == 400 and r.text.startswith("ERR_INCOMPLETE_UPLOAD")
    r = await patch(client, url, MIB, data[MIB:])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    r = await client.head(url, headers=TUS)
    assert r.headers["upload-offset"] == str(len(data))
    r = await client.get(url, headers={**TUS, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = await client.get(url, headers=TUS)
    assert r.content == data and "test.txt" in r.headers["content-disposition"]
    assert (await client.delete(url, headers=TUS)).status_code == 204
    assert (await client.head(url, headers=TUS)).status_code == 404


def test_flags_choose_the_s3_store_and_its_options(tmp_path):
    from pytusd import MemoryLocker
    from pytusd.server.cli.compose import config_from_args
    from pytusd.server.cli.flags import build_parser, normalise_argv

    argv = ["-s3-bucket", "b", "-s3-endpoint", "http://127.0.0.1:9", "-s3-object-prefix", "up/",
            "-s3-part-size", str(8 * MIB), "-s3-max-buffered-parts", "3", "-s3-concurrent-part-uploads", "2",
            "-s3-disable-content-hashes", "-s3-readable-uploads", "--upload-dir", str(tmp_path)]
    config = config_from_args(build_parser().parse_args(normalise_argv(argv)))
    store = config.store
    assert isinstance(store, S3Store) and isinstance(config.locker, MemoryLocker)
    assert store.bucket == "b" and store.object_key("x") == "up/x" and store.meta_key("x.info") == "up/x.info"
    assert store.plan.preferred_size == 8 * MIB and store.max_buffered_parts == 3 and store.concurrent_part_uploads == 2
    assert store.disable_content_hashes
    assert store.readable_uploads and store.capabilities.readable_while_incomplete
    assert not S3Store.capabilities.readable_while_incomplete  # the default layout's
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.config.s3["addressing_style"] == "path"


def test_transfer_acceleration_and_api_call_logging_from_the_flags(tmp_path, monkeypatch):
    from pytusd.server.cli.compose import config_from_args
    from pytusd.server.cli.flags import build_parser, normalise_argv

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    argv = ["-s3-bucket", "uploads", "-s3-transfer-acceleration", "-s3-log-api-calls", "--upload-dir", str(tmp_path)]
    store = config_from_args(build_parser().parse_args(normalise_argv(argv))).store
    assert isinstance(store, S3Store) and store.log_api_calls
    assert store.client.meta.config.s3["use_accelerate_endpoint"] is True
    url = store.client.generate_presigned_url("put_object", Params={"Bucket": "uploads", "Key": "k"})
    assert url.startswith("https://uploads.s3-accelerate.amazonaws.com/k?")
    assert "transfer acceleration" in repr(store)
    plain = config_from_args(build_parser().parse_args(["--s3-bucket", "uploads", "--upload-dir", str(tmp_path)])).store
    assert not plain.log_api_calls and "use_accelerate_endpoint" not in plain.client.meta.config.s3
    url = plain.client.generate_presigned_url("put_object", Params={"Bucket": "uploads", "Key": "k"})
    assert "s3-accelerate" not in url


@pytest.mark.parametrize(("argv", "message"), [
    (["-s3-transfer-acceleration", "-s3-endpoint", "http://127.0.0.1:9"], "cannot be combined with a custom endpoint"),
    (["-s3-log-api-calls", "-verbose=false"], "--s3-log-api-calls logs at the verbose level: it needs --verbose"),
])
def test_s3_flags_that_cannot_work_are_errors(argv, message, tmp_path, capsys):
    from pytusd.server.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["-s3-bucket", "b", "--upload-dir", str(tmp_path), "--port", "0", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_api_call_is_one_log_line(caplog, monkeypatch):
    """-s3-log-api-calls through botocore's event hooks, the client stubbed (botocore's Stubber): no S3 here."""
    import logging

    from botocore.exceptions import EndpointConnectionError
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    client = make_client(endpoint="http://127.0.0.1:9")
    S3Store("b", client, log_api_calls=True)
    S3Store("b", client, log_api_calls=True)  # a second store on the same client: still one line per call
    with caplog.at_level(logging.INFO, logger="pytusd.s3"), Stubber(client) as stub:
        stub.add_response("head_object", {"ContentLength": 3, "ResponseMetadata": {"HTTPStatusCode": 200}},
                          {"Bucket": "b", "Key": "up/a"})
        stub.add_client_error("upload_part", "NoSuchUpload", http_status_code=404)
        client.head_object(Bucket="b", Key="up/a")
        with pytest.raises(client.exceptions.NoSuchUpload):
            client.upload_part(Bucket="b", Key="up/x", UploadId="u", PartNumber=7, Body=b"")
    records = [r for r in caplog.records if r.name == "pytusd.s3"]
    assert [r.fields["operation"] for r in records] == ["HeadObject", "UploadPart"]
    head, part = (r.fields for r in records)
    assert head["status"] == 200 and head["key"] == "up/a" and head["duration_ms"] >= 0
    assert part["status"] == 404 and part["key"] == "up/x" and part["part"] == 7
    assert records[0].getMessage().startswith("S3 HeadObject: 200 in ")

    def refuse(**kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    caplog.clear()
    client.meta.events.register("before-send.s3", refuse)
    with caplog.at_level(logging.INFO, logger="pytusd.s3"), pytest.raises(EndpointConnectionError):  # retried: one line
        client.get_object(Bucket="b", Key="up/b")
    [line] = [r for r in caplog.records if r.name == "pytusd.s3"]
    assert line.fields["operation"] == "GetObject" and "Could not connect" in line.fields["error"]
    # Not asked for: no lines.
    quiet = make_client(endpoint="http://127.0.0.1:9")
    S3Store("b", quiet)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pytusd.s3"), Stubber(quiet) as stub:
        stub.add_response("head_object", {}, {"Bucket": "b", "Key": "k"})
        quiet.head_object(Bucket="b", Key="k")
    assert not [r for r in caplog.records if r.name == "pytusd.s3"]


def test_presigned_part_uploads_are_logged_too(caplog, monkeypatch):
    """--s3-disable-content-hashes sends parts to presigned URLs, past botocore: those calls get their line too. The
    "S3" is a local HTTP server that answers every PUT 200 with an ETag."""
    import http.server
    import logging
    import threading
    from types import SimpleNamespace

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("ETag", '"abc"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    try:
        client = make_client(endpoint=f"http://127.0.0.1:{server.server_address[1]}")
        store = S3Store("b", client, object_prefix="up/", disable_content_hashes=True, log_api_calls=True)
        upload = SimpleNamespace(object_id="obj", multipart_id="mp")
        with caplog.at_level(logging.INFO, logger="pytusd.s3"):
            assert store._put_part_presigned(upload, 3, None, 0) == '"abc"'
    finally:
        server.shutdown()
        server.server_close()
    [line] = [r for r in caplog.records if r.name == "pytusd.s3"]
    assert line.fields["operation"] == "UploadPart" and line.fields["presigned"] is True
    assert line.fields["status"] == 200 and line.fields["key"] == "up/obj" and line.fields["part"] == 3


def test_two_storages_on_the_command_line_are_an_error(capsys):
    from pytusd.server.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--s3-bucket", "a", "--azure-storage", "b", "--port", "0"])
    assert exit_info.value.code == 2
    assert "choose one storage: --s3-bucket and --azure-storage" in capsys.readouterr().err


async def test_an_orphan_part_never_joins_the_upload_later(s3):
    """Part 3 stored after a gap (part 2 failed, or its process died). A later request that fills number 2 with a
    short part must not make part 3's bytes count: the orphan's number is skipped, new parts come after it."""
    store = store_for(s3)
    data = os.urandom(12 * MIB)
    upload = await store.create(UploadInfo(size=len(data)))
    upload_id = upload.id
    await upload.write(0, chunks_of(data[: 5 * MIB]))  # part 1
    s3.upload_part(
        Bucket=s3.pytusd_bucket, Key=upload.object_id, UploadId=upload.multipart_id, PartNumber=3, Body=b"x" * PART
    )
    fresh = await store.get(upload_id)
    assert (await fresh.info()).offset == 5 * MIB
    assert await fresh.write(5 * MIB, chunks_of(data[5 * MIB : 11 * MIB])) == 6 * MIB
    again = await store_for(s3, make_client(endpoint=s3.meta.endpoint_url)).get(upload_id)
    info = await again.info()
    assert info.offset == 11 * MIB and info.storage["PytusdSkipParts"] == "2-3"
    await again.write(11 * MIB, chunks_of(data[11 * MIB :]))
    await again.finish()
    assert await read_all(await store.get(upload_id)) == data


# --- Content-MD5: S3 refuses a part or tail damaged on the way ------------------------------------------------------


def test_each_spooled_piece_carries_the_md5_of_its_bytes():
    import asyncio
    import base64

    from pytusd.stores.objects.spool import PieceWriter
    from pytusd.stores.s3 import content_md5

    seen: list[tuple[int, str | None]] = []

    async def upload(number, start, spool, size):
        seen.append((number, content_md5(spool)))
        return number

    async def run() -> str | None:
        writer = PieceWriter(upload, first_number=1, first_byte=0, piece_size=lambda n, s: 1000, max_buffered=2,
                             md5=True)
        await writer.feed(bytes(range(256)) * 10)  # 2560 bytes: two pieces of 1000, a remainder of 560
        tail = writer.detach()
        await writer.settle()
        assert tail is not None
        return content_md5(tail)

    tail_md5 = asyncio.run(run())
    data = bytes(range(256)) * 10

    def b64md5(b: bytes) -> str:
        return base64.b64encode(hashlib.md5(b).digest()).decode()

    assert seen == [(1, b64md5(data[:1000])), (2, b64md5(data[1000:2000]))]
    assert tail_md5 == b64md5(data[2000:])
    assert content_md5(None) == b64md5(b"")


@pytest.mark.parametrize("presigned", [False, True], ids=["signed", "presigned"])
@pytest.mark.parametrize("where", ["part", "tail"])
async def test_a_wrong_content_md5_is_refused_with_bad_digest_and_not_counted(s3, monkeypatch, presigned, where):
    """Bytes that do not match their Content-MD5 (as if damaged between pytusd and S3; here the digest is the one
    that is wrong) are refused by Ceph with BadDigest: the PATCH fails with a tus error and the offset, as another
    process loads it, has not moved; sent again with the right digest, the same bytes are kept."""
    import pytusd.stores.s3 as s3_module

    store = store_for(s3, disable_content_hashes=presigned, content_md5=True)
    data = os.urandom(2 * PART + 1000)
    upload = await store.create(UploadInfo(size=len(data)))
    # part: 1000 bytes wait in the tail, then a PATCH of a part's size makes part 1; tail: a full part, then 1000
    # bytes that go to the tail object.
    first = PART if where == "tail" else 1000
    assert await upload.write(0, chunks_of(data[:first])) == first
    right = s3_module.content_md5
    monkeypatch.setattr(s3_module, "content_md5", lambda spool: base64_md5(b"not these bytes"))
    second = data[first : first + (1000 if where == "tail" else PART)]
    with pytest.raises(errors.TusError) as refused:
        await (await store.get(upload.id)).write(first, chunks_of(second))
    assert refused.value.status == 500 and "BadDigest" in str(refused.value), refused.value
    again = await store_for(s3, client=make_client(endpoint=s3.meta.endpoint_url), content_md5=True).get(upload.id)
    assert (await again.info()).offset == first
    monkeypatch.setattr(s3_module, "content_md5", right)
    assert await again.write(first, chunks_of(second)) == len(second)
    assert (await (await store_for(s3).get(upload.id)).info()).offset == first + len(second)


def base64_md5(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- the readable layout (readable_uploads, --s3-readable-uploads) -------------------------------------------------


def multipart_parts(s3, upload) -> list[int]:
    page = s3.list_parts(Bucket=s3.pytusd_bucket, Key=upload.object_id, UploadId=upload.multipart_id)
    return [p["PartNumber"] for p in page.get("Parts", [])]


async def test_readable_layout_keeps_parts_as_objects_until_finish_copies_them(s3):
    """Each part is the object <objectId>.p<N> while the upload is unfinished (the multipart upload holds none),
    the .info records the layout; finish copies them into the multipart upload on the server, completes it and
    deletes them, leaving exactly tusd's objects."""
    store = store_for(s3, readable_uploads=True)
    data = os.urandom(2 * PART + 100)
    upload = await store.create(UploadInfo(size=len(data)))
    oid = upload.object_id
    await upload.write(0, chunks_of(data[: PART + 7]))
    assert keys(s3) == {oid + ".info", oid + ".p1", oid + ".part"}
    assert multipart_parts(s3, upload) == []
    info = json.loads(s3.get_object(Bucket=s3.pytusd_bucket, Key=oid + ".info")["Body"].read())
    assert info["Storage"]["PytusdLayout"] == "piece-objects"
    assert s3.get_object(Bucket=s3.pytusd_bucket, Key=oid + ".p1")["Body"].read() == data[:PART]
    # Another process (a store without the flag: each upload is read in the layout its .info records).
    other = await store_for(s3, client=make_client(endpoint=s3.meta.endpoint_url)).get(upload.id)
    assert (await other.info()).offset == PART + 7
    await other.write(PART + 7, chunks_of(data[PART + 7 :]))
    assert keys(s3) == {oid + ".info", oid + ".p1", oid + ".p2", oid + ".p3"}
    await other.finish()
    assert keys(s3) == {oid, oid + ".info"}
    assert s3.get_object(Bucket=s3.pytusd_bucket, Key=oid)["Body"].read() == data
    assert await read_all(await store.get(upload.id)) == data


async def test_readable_layout_a_default_layout_upload_still_answers_incomplete(s3, client_factory):
    """A store with the flag serves an upload of tusd's layout as before: its offset from the parts, and GET of
    it unfinished is 400 ERR_INCOMPLETE_UPLOAD (its bytes are parts, not readable)."""
    from pytusd import MemoryLocker

    data = os.urandom(PART + 10)
    plain = await store_for(s3).create(UploadInfo(size=len(data)))
    await plain.write(0, chunks_of(data[:PART]))
    store = store_for(s3, readable_uploads=True)
    assert (await (await store.get(plain.id)).info()).offset == PART
    client = client_factory(store=store, locker=MemoryLocker())
    r = await client.get(f"/files/{plain.id}", headers=TUS)
    assert r.status_code == 400 and r.text.startswith("ERR_INCOMPLETE_UPLOAD")


async def test_readable_layout_a_reader_follows_bytes_that_moved_meanwhile(s3):
    """GET streams without the upload's lock: a reader whose state was loaded before another process moved the
    tail's bytes into a part, or finished the upload (the piece objects deleted), still reads the right bytes."""
    store = store_for(s3, readable_uploads=True)
    data = os.urandom(2 * PART + 100)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data[: PART + MIB]))  # part 1 and a tail of 1 MiB
    early = await store_for(s3).get(upload.id)
    await early.state()  # loaded: part 1 and the tail
    writer = await store_for(s3, readable_uploads=True).get(upload.id)
    tail_etag = s3.head_object(Bucket=s3.pytusd_bucket, Key=upload.object_id + ".part")["ETag"]
    # The tail's bytes go into part 2, and a new tail of 7 bytes takes the old one's key.
    await writer.write(PART + MIB, chunks_of(data[PART + MIB : 2 * PART + 7]))
    assert s3.head_object(Bucket=s3.pytusd_bucket, Key=upload.object_id + ".part")["ETag"] != tail_etag
    assert await read_all(early, PART - 3, PART + MIB) == data[PART - 3 : PART + MIB]
    later = await store_for(s3).get(upload.id)
    await later.state()  # loaded: parts 1 and 2, the new tail
    await writer.write(2 * PART + 7, chunks_of(data[2 * PART + 7 :]))
    await writer.finish()
    assert upload.object_id + ".p1" not in keys(s3)
    assert await read_all(later, 10, 2 * PART + 7) == data[10 : 2 * PART + 7]


async def test_readable_layout_orphan_pieces_and_stale_tails_are_not_counted(s3):
    """Crash safety as in tusd's layout: a piece object after a gap does not count and is never joined later (its
    number is skipped), and a tail whose bytes are in a piece already is not counted twice."""
    store = store_for(s3, readable_uploads=True)
    data = os.urandom(3 * PART + 10)
    upload = await store.create(UploadInfo(size=len(data)))
    oid = upload.object_id
    await upload.write(0, chunks_of(data[:MIB]))  # the tail, starting at 0
    # The "crashed" request had put the tail plus more into piece 1, and piece 3 after a gap:
    s3.put_object(Bucket=s3.pytusd_bucket, Key=oid + ".p1", Body=data[:PART])
    s3.put_object(Bucket=s3.pytusd_bucket, Key=oid + ".p3", Body=b"x" * PART)
    fresh = await store.get(upload.id)
    assert (await fresh.info()).offset == PART
    await fresh.write(PART, chunks_of(data[PART:]))
    assert (await (await store.get(upload.id)).info()).offset == len(data)
    assert await read_all(await store.get(upload.id)) == data
    await fresh.finish()
    assert keys(s3) == {oid, oid + ".info"}
    assert await read_all(await store.get(upload.id)) == data


async def test_readable_layout_an_interrupted_finish_is_finished_again(s3, monkeypatch):
    """A finish that fails after the parts were copied (here CompleteMultipartUpload) keeps the upload as it was:
    another process loads the same offset from the piece objects and finishes it; piece objects left by a crash
    after the completion are deleted when the finished upload is next loaded."""
    store = store_for(s3, readable_uploads=True)
    data = os.urandom(PART + 10)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data))
    calls = []

    async def failing(*args, **kwargs):
        calls.append(args)
        raise errors.ERR_INTERNAL_SERVER_ERROR("S3 went away")

    monkeypatch.setattr(store, "_complete", failing)
    with pytest.raises(errors.TusError):
        await upload.finish()
    assert calls and multipart_parts(s3, upload) == [1, 2]  # the copies were made
    again = await store_for(s3, readable_uploads=True).get(upload.id)
    assert (await again.info()).offset == len(data) and await read_all(again) == data
    await again.finish()
    assert await read_all(await store.get(upload.id)) == data
    s3.put_object(Bucket=s3.pytusd_bucket, Key=upload.object_id + ".p1", Body=b"left by a crash")
    await store_for(s3, readable_uploads=True).get(upload.id)
    assert keys(s3) == {upload.object_id, upload.object_id + ".info"}


async def test_an_id_that_would_name_another_uploads_piece_is_refused(s3):
    """A pre-create hook's ID ``<other>.p<N>`` would make the upload's object the piece N of upload ``<other>`` (and
    overwrite it at finish): refused with a tus error before anything is stored."""
    store = store_for(s3, readable_uploads=True)
    victim = await store.create(UploadInfo(id="victim", size=2 * PART))
    await victim.write(0, chunks_of(b"v" * PART))
    for chosen in ("victim.p1", "x.p22"):
        with pytest.raises(errors.TusError) as refused:
            await store_for(s3).create(UploadInfo(id=chosen, size=10))
        assert refused.value.status == 500 and ".p<number>" in refused.value.message
    assert keys(s3) == {"victim.info", "victim.p1"}
    assert (await store.create(UploadInfo(id="x.p", size=1))).object_id == "x.p"  # not a piece's name


@pytest.mark.parametrize("presigned", [False, True], ids=["signed", "presigned"])
async def test_readable_layout_terminate_and_presigned_pieces(s3, presigned):
    store = store_for(s3, readable_uploads=True, disable_content_hashes=presigned)
    data = os.urandom(PART + 10)
    upload = await store.create(UploadInfo(size=2 * PART))
    await upload.write(0, chunks_of(data))
    assert keys(s3) == {upload.object_id + k for k in (".info", ".p1", ".part")}
    assert await read_all(await store.get(upload.id)) == data
    await (await store.get(upload.id)).terminate()
    assert keys(s3) == set() and s3.list_multipart_uploads(Bucket=s3.pytusd_bucket).get("Uploads", []) == []


# --- a lifecycle rule as a backstop: AbortIncompleteMultipartUpload ------------------------------------------------

# The rule README's "S3" section recommends (with the days to choose there).
ABORT_RULE = {
    "ID": "abort-incomplete-multipart-uploads",
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
}


async def test_a_lifecycle_rule_aborts_an_incomplete_multipart_upload(s3_endpoint):
    """Ceph applies AbortIncompleteMultipartUpload (the testbed's ``rgw lc debug interval`` makes its day 10 s): an
    unfinished upload's multipart upload is aborted within a bounded wait, its parts with it. What remains is the
    .info and the tail: the upload is lost, not found (tusd takes it for finished), and the cleaner removes them."""
    import asyncio
    import time

    from pytusd import MemoryLocker
    from pytusd.core.expiration import Cleaner
    from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY

    os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    client = make_client(endpoint=s3_endpoint)
    bucket = f"lifecycle-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    try:
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [ABORT_RULE]})
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
        store = S3Store(bucket, client, part_size=PART, min_part_size=PART)
        upload = await store.create(UploadInfo(size=2 * PART))
        await upload.write(0, chunks_of(os.urandom(PART + 10)))
        assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [
            upload.multipart_id]
        started, deadline = time.monotonic(), time.monotonic() + 120
        while client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            assert time.monotonic() < deadline, "Ceph did not abort the multipart upload within 120 s"
            await asyncio.sleep(2)
        print(f"aborted after {time.monotonic() - started:.0f} s")
        left = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert left == {upload.object_id + ".info", upload.object_id + ".part"}
        with pytest.raises(errors.TusError) as lost:
            await S3Store(bucket, client).get(upload.id)
        assert lost.value.is_(errors.ERR_UPLOAD_NOT_FOUND)
        assert await Cleaner(S3Store(bucket, client), MemoryLocker(), 3600, 0).run_once() == 1
        assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    finally:
        for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


async def test_readable_layout_with_digest_a_tusd_layout_upload_begun_before_digest_goes_on(s3):
    """--digest with --s3-readable-uploads on a bucket that holds an unfinished upload of tusd's layout begun before
    --digest: the store says it reads unfinished uploads, but not this one; its PATCH still goes on, as it does
    without the flag, and the finished upload gets its digest."""
    import httpx

    from pytusd import Config, TusApp

    data = os.urandom(PART + 10)
    plain = await store_for(s3).create(UploadInfo(size=len(data)))
    await plain.write(0, chunks_of(data[:PART]))
    app = TusApp(Config(store=store_for(s3, readable_uploads=True), digest="sha256"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test") as client:
        r = await client.patch(f"/files/{plain.id}", content=data[PART:], headers={
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(PART)})
        assert r.status_code == 204, r.text
        r = await client.head(f"/files/{plain.id}", headers=TUS)
    assert r.headers["repr-digest"] == f"sha-256=:{base64_sha256(data)}:"


def base64_sha256(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_content_md5_is_opt_in(s3):
    """--s3-content-md5: off by default (its MD5 costs CPU on the event loop), on when asked."""
    from pytusd.stores.s3 import S3Upload

    assert not S3Upload(store_for(s3), "x", "y")._spool_md5()
    assert S3Upload(store_for(s3, content_md5=True), "x", "y")._spool_md5()


# --- a multipart upload aborted before it was completed (a lifecycle rule, by hand) --------------------------------


def abort(s3, upload) -> None:
    s3.abort_multipart_upload(Bucket=s3.pytusd_bucket, Key=upload.object_id, UploadId=upload.multipart_id)


async def test_an_upload_whose_multipart_upload_was_aborted_is_lost_and_reclaimed(s3, client_factory):
    """tusd's layout: the parts went with the multipart upload, so the upload is not found (tusd takes it for
    finished, its offset for the length, and a resuming client for done), through the app too; the cleaner (and
    ``pytusd cleanup``, the same pass) removes its .info and .part. A finished upload is not taken for lost."""
    from pytusd import MemoryLocker
    from pytusd.core.expiration import Cleaner

    store = store_for(s3)
    data = os.urandom(PART + 10)
    lost = await store.create(UploadInfo(size=2 * PART))
    await lost.write(0, chunks_of(data))
    done = await store.create(UploadInfo(size=len(data)))
    await done.write(0, chunks_of(data))
    await done.finish()
    abort(s3, lost)
    assert {lost.object_id + ".info", lost.object_id + ".part"} <= keys(s3)
    with pytest.raises(errors.TusError) as missing:
        await store_for(s3).get(lost.id)
    assert missing.value.is_(errors.ERR_UPLOAD_NOT_FOUND)
    client = client_factory(store=store_for(s3))
    r = await client.head(f"/files/{lost.id}", headers=TUS)
    assert r.status_code == 404
    r = await patch(client, f"/files/{lost.id}", PART + 10, b"more")
    assert r.status_code == 404
    assert not await store_for(s3).reclaim(done.id)  # finished: not lost, nothing removed
    assert await Cleaner(store_for(s3), MemoryLocker(), 3600, 0).run_once() == 1
    assert not {k for k in keys(s3) if k.startswith(lost.object_id)}
    finished = await store_for(s3).get(done.id)
    info = await finished.info()
    assert info.is_complete and await read_all(finished) == data and await finished.modified_time() > 0


async def test_the_readable_layout_survives_an_aborted_multipart_upload(s3):
    """--s3-readable-uploads: the bytes are in piece objects, not in the multipart upload's parts, so an aborted
    multipart upload loses nothing: the upload goes on and its finish starts a new multipart upload."""
    store = store_for(s3, readable_uploads=True)
    size = PART + 10
    data = os.urandom(size)
    upload = await store.create(UploadInfo(size=size + 3))
    await upload.write(0, chunks_of(data))
    abort(s3, upload)
    again = await store_for(s3, readable_uploads=True).get(upload.id)
    info = await again.info()
    assert info.offset == size and not info.is_complete
    assert await read_all(again) == data
    assert await again.write(size, chunks_of(b"end")) == 3
    await again.finish()
    assert s3.list_multipart_uploads(Bucket=s3.pytusd_bucket).get("Uploads", []) == []
    final = await store_for(s3).get(upload.id)
    assert (await final.info()).is_complete and await read_all(final) == data + b"end"
    assert {k for k in keys(s3) if k.startswith(upload.object_id)} == {upload.object_id, upload.object_id + ".info"}
    head = s3.head_object(Bucket=s3.pytusd_bucket, Key=upload.object_id)
    assert head["ContentLength"] == size + 3


@pytest.mark.parametrize("readable", [False, True], ids=["tusd-layout", "readable-layout"])
async def test_a_finished_upload_whose_object_was_removed_later_is_not_taken_for_lost(s3, readable):
    """A post-finish hook or a consumer moves the object away: nothing of an unfinished upload is left beside the
    gone multipart upload (finish removed the .part and the piece objects), so it still reads as finished, and the
    cleaner leaves its .info alone."""
    from pytusd import MemoryLocker
    from pytusd.core.expiration import Cleaner

    store = store_for(s3, readable_uploads=readable)
    data = os.urandom(PART + 10)
    upload = await store.create(UploadInfo(size=len(data)))
    await upload.write(0, chunks_of(data))
    await upload.finish()
    s3.delete_object(Bucket=s3.pytusd_bucket, Key=upload.object_id)
    again = await store_for(s3, readable_uploads=readable).get(upload.id)
    assert (await again.info()).is_complete
    assert not await store.reclaim(upload.id)
    assert await Cleaner(store_for(s3), MemoryLocker(), 1, 0).run_once() == 0
    assert keys(s3) == {upload.object_id + ".info"}
