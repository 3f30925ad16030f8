"""``--digest`` (pytusd.core.digests, pytusd.hashstate): resumable hash states, the flows around them, and what
hooks, events, HEAD, GET and the draft protocol see. Every store runs the same in tests/unit/stores/
test_digest_contract.py; here the file store stands for them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import struct

import httpx
import pytest

from pytusd import Config, FileStore, TusApp, hashstate
from pytusd.core import digests
from pytusd.info import UploadInfo
from pytusd.server.cli.main import main

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def sha256_field(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


# --- the resumable hashes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_a_state_resumed_anywhere_gives_hashlibs_digest(algorithm):
    rng = random.Random(7)
    data = os.urandom(300_001)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 6)))
        h = hashstate.ResumableHash(algorithm)
        start = 0
        for cut in [*cuts, len(data)]:
            piece = data[start:cut]
            h.update(rng.choice([bytes, bytearray, memoryview])(piece))
            h = hashstate.ResumableHash.resume(algorithm, h.state())  # as if another process went on
            assert h.digest() == hashlib.new(algorithm, data[:cut]).digest()
            start = cut
    assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    copy = h.copy()
    copy.update(b"more")
    assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest()  # the copy is separate


def test_a_read_only_memoryview_is_hashed():
    h = hashstate.ResumableHash("sha256")
    h.update(memoryview(b"abc"))
    h.update(memoryview(b"xdefx")[1:4])
    assert h.digest() == hashlib.sha256(b"abcdef").digest()


def _tampered(state: str, offset: int, value: int) -> str:
    prefix, _, encoded = state.partition(":")
    raw = bytearray(base64.b64decode(encoded))
    struct.pack_into("=I", raw, offset, value)
    return f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_a_damaged_or_forged_state_is_refused_before_openssl_sees_it(algorithm):
    kind = hashstate.KINDS[algorithm]
    state = hashstate.ResumableHash(algorithm).state()
    bad = [
        _tampered(state, kind.tail, kind.block),  # num past the block: OpenSSL would copy out of bounds
        _tampered(state, kind.tail, 2**31),
        _tampered(state, kind.tail + 4, 28),  # a SHA-224 context
        state.replace("ossl1le", "ossl1be"),
        state[:-8],
        "ossl1le:not base64!",
        "",
        hashstate.ResumableHash("sha512" if algorithm == "sha256" else "sha256").state(),
    ]
    for text in bad:
        with pytest.raises(ValueError):
            hashstate.ResumableHash.resume(algorithm, text)


def test_unknown_algorithms_are_refused():
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        digests.parse_algorithms("sha256,md4")
    assert digests.parse_algorithms("SHA-256, sha512,sha256") == ("sha256", "sha512")
    assert digests.parse_algorithms("") == ()


# --- configuration ------------------------------------------------------------------------------------------------


def test_config_refuses_a_store_that_cannot_carry_the_state(tmp_path):
    from tests.test_library import MemoryStore

    with pytest.raises(ValueError, match="annotated"):
        Config(store=MemoryStore(), digest="sha256")
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        Config(store=FileStore(tmp_path), digest="crc32")
    assert Config(store=FileStore(tmp_path), digest="sha512").digest == ("sha512",)


def test_the_command_line_refuses_an_unknown_algorithm_with_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--digest", "md4", "--upload-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown digest algorithm 'md4'" in capsys.readouterr().err


# --- through the app ----------------------------------------------------------------------------------------------


def client_for(app: TusApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test")


async def test_hooks_and_events_see_the_digest_at_finish_and_not_before(tmp_path):
    seen: dict[str, dict] = {}

    async def hook(hook_type: str, payload: dict) -> None:
        seen[hook_type] = payload["Event"]["Upload"]["Storage"]

    app = TusApp(Config(store=FileStore(tmp_path), digest="sha256", hooks=hook))
    data = os.urandom(100_000)
    async with app.events.completed() as completed, client_for(app) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
        url = r.headers["location"]
        r = await client.patch(url, content=data[:500], headers={**PATCH, "Upload-Offset": "0"})
        assert r.status_code == 204
        r = await client.patch(url, content=data[500:], headers={**PATCH, "Upload-Offset": "500"})
        assert r.status_code == 204
        event = await completed.get()
    assert event.upload.storage["Repr-Digest"] == sha256_field(data)
    for _ in range(200):  # post-finish runs in the background
        if "post-finish" in seen:
            break
        await asyncio.sleep(0.01)
    assert seen["post-finish"]["Repr-Digest"] == sha256_field(data)
    assert "DigestState" not in seen["post-finish"]
    assert "Repr-Digest" not in seen["post-create"]
    stored = json.loads((tmp_path / (url.rsplit("/", 1)[-1] + ".info")).read_text())
    assert stored["Storage"]["Repr-Digest"] == sha256_field(data) and "DigestState" not in stored["Storage"]


async def test_a_hook_cannot_plant_a_digest(tmp_path):
    """Storage set by a pre-create hook (perhaps from client input) never carries the digest's keys in."""

    async def hook(hook_type: str, payload: dict) -> dict:
        if hook_type == "pre-create":
            return {"ChangeFileInfo": {"Storage": {"Repr-Digest": "sha-256=:AAAA:", "DigestState": "{}"}}}
        return {}

    app = TusApp(Config(store=FileStore(tmp_path), digest="sha256", hooks=hook))
    data = b"the real content"
    async with client_for(app) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
        url = r.headers["location"]
        r = await client.head(url, headers=TUS)
        assert "repr-digest" not in r.headers
        info = json.loads((tmp_path / (url.rsplit("/", 1)[-1] + ".info")).read_text())
        assert "Repr-Digest" not in info["Storage"] and "DigestState" not in info["Storage"]
        await client.patch(url, content=data, headers={**PATCH, "Upload-Offset": "0"})
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)


async def test_the_draft_protocol_gets_the_digest(tmp_path):
    app = TusApp(Config(store=FileStore(tmp_path), digest="sha256", enable_experimental_protocol=True))
    data = os.urandom(5000)
    draft = {"Upload-Draft-Interop-Version": "6"}
    async with client_for(app) as client:
        r = await client.post("/files/", content=data, headers={**draft, "Upload-Complete": "?1"})
        assert r.status_code == 201, r.text
        r = await client.head(r.headers["location"], headers=draft)
        assert r.headers["upload-complete"] == "?1" and r.headers["repr-digest"] == sha256_field(data)


async def test_no_digest_without_the_option_and_none_while_unfinished(tmp_path):
    async with client_for(TusApp(Config(store=FileStore(tmp_path)))) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
        url = r.headers["location"]
        await client.patch(url, content=b"abc", headers={**PATCH, "Upload-Offset": "0"})
        assert "repr-digest" not in (await client.head(url, headers=TUS)).headers
    async with client_for(TusApp(Config(store=FileStore(tmp_path), digest="sha256"))) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "6"})
        url = r.headers["location"]
        await client.patch(url, content=b"abc", headers={**PATCH, "Upload-Offset": "0"})
        r = await client.head(url, headers=TUS)
        assert r.headers["upload-offset"] == "3" and "repr-digest" not in r.headers
        assert "Repr-Digest" in r.headers.get("access-control-expose-headers", "Repr-Digest")


async def test_bytes_hashed_but_not_stored_are_never_saved(tmp_path):
    """The store kept fewer bytes than were hashed: no state is saved for an offset the bytes do not match."""
    store = FileStore(tmp_path)
    upload = await store.create(UploadInfo(size=10))
    info = await upload.info()
    running = digests.Running(0, [hashstate.ResumableHash("sha256")])
    async for _ in running.feed(_chunks(b"0123456789")):
        pass
    d = digests.Digests(("sha256",), readable_while_incomplete=True)
    after = await d.after_write(upload, info.replace(offset=4), running, 4)
    assert digests.STATE_KEY not in after.storage
    assert digests.STATE_KEY not in (await (await store.get(info.id)).info()).storage


async def _chunks(data: bytes):
    yield data


async def test_an_unusable_saved_state_starts_over_from_the_stored_bytes(tmp_path):
    app = TusApp(Config(store=FileStore(tmp_path), digest="sha256"))
    data = os.urandom(3000)
    async with client_for(app) as client:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
        url = r.headers["location"]
        await client.patch(url, content=data[:1000], headers={**PATCH, "Upload-Offset": "0"})
        upload = await app.handlers.store.get(url.rsplit("/", 1)[-1])
        await upload.annotate({digests.STATE_KEY: '{"offset": 1000, "sha256": "ossl1le:AAAA"}'})
        await client.patch(url, content=data[1000:], headers={**PATCH, "Upload-Offset": "1000"})
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)


def test_a_new_upload_never_starts_with_the_digests_keys():
    """The built-in stores replace Storage at creation anyway; a user's store may keep it, so the flow drops them."""
    planted = UploadInfo(size=3, storage={"Repr-Digest": "sha-256=:AAAA:", "DigestState": "{}", "Path": "x"})
    assert digests.without_reserved(planted).storage == {"Path": "x"}
    clean = UploadInfo(size=3, storage={"Path": "x"})
    assert digests.without_reserved(clean) is clean


# --- no second read, and only the gap when behind (the review of 2026-12-03) ----------------------------------------


def record_reads(monkeypatch) -> list[tuple[int, int | None]]:
    """Every range read from a file-store upload, from now on."""
    from pytusd.stores.file import FileUpload

    reads: list[tuple[int, int | None]] = []
    real = FileUpload.reader

    def reader(self, start=0, end=None):
        reads.append((start, end))
        return real(self, start, end)

    monkeypatch.setattr(FileUpload, "reader", reader)
    return reads


async def patch_all(client, url, data, cuts) -> None:
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        r = await client.patch(url, content=data[start:end], headers={**PATCH, "Upload-Offset": str(start)})
        assert r.status_code == 204, r.text


async def test_the_digest_needs_no_read_of_the_data(tmp_path, monkeypatch):
    reads = record_reads(monkeypatch)
    data = os.urandom(50_000)
    async with client_for(TusApp(Config(store=FileStore(tmp_path), digest="sha256"))) as client:
        url = (await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})).headers["location"]
        await patch_all(client, url, data, [100, 20_000, 20_001])
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)
    assert reads == []


async def test_a_state_behind_is_caught_up_by_reading_only_the_gap(tmp_path, monkeypatch):
    store = FileStore(tmp_path)
    data = os.urandom(50_000)
    async with client_for(TusApp(Config(store=store, digest="sha256"))) as client:
        url = (await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})).headers["location"]
        await patch_all(client, url, data[:10_000], [1000])
        upload = await store.get(url.rsplit("/", 1)[-1])
        older = (await upload.info()).storage[digests.STATE_KEY]  # covers 10,000 bytes
        await client.patch(url, content=data[10_000:30_000], headers={**PATCH, "Upload-Offset": "10000"})
        await (await store.get(url.rsplit("/", 1)[-1])).annotate({digests.STATE_KEY: older})
        reads = record_reads(monkeypatch)
        await client.patch(url, content=data[30_000:], headers={**PATCH, "Upload-Offset": "30000"})
        assert reads == [(10_000, 30_000)]
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)


async def test_a_refused_chunk_leaves_the_saved_state_as_it_was(tmp_path):
    store = FileStore(tmp_path)
    data = os.urandom(4000)
    async with client_for(TusApp(Config(store=store, digest="sha256"))) as client:
        url = (await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})).headers["location"]
        await patch_all(client, url, data[:1000], [])
        upload_id = url.rsplit("/", 1)[-1]
        before = (await (await store.get(upload_id)).info()).storage[digests.STATE_KEY]
        digest = base64.b64encode(hashlib.sha1(data[1000:]).digest()).decode()
        r = await client.patch(url, content=b"x" * 3000, headers={
            **PATCH, "Upload-Offset": "1000", "Upload-Checksum": f"sha1 {digest}"})
        assert r.status_code == 460
        assert (await (await store.get(upload_id)).info()).storage[digests.STATE_KEY] == before
        r = await client.patch(url, content=data[1000:], headers={
            **PATCH, "Upload-Offset": "1000", "Upload-Checksum": f"sha1 {digest}"})
        assert r.status_code == 204
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)


# --- failures around the finish -------------------------------------------------------------------------------------


def failing_annotate(monkeypatch, times: int) -> dict[str, int]:
    """The next ``times`` annotate calls that store a digest fail as a full disk would."""
    import errno

    from pytusd.stores.file import FileUpload

    real = FileUpload.annotate
    left = {"failures": times}

    async def annotate(self, changes):
        if digests.DIGEST_KEY in changes and left["failures"] > 0:
            left["failures"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, changes)

    monkeypatch.setattr(FileUpload, "annotate", annotate)
    return left


async def test_a_digest_that_cannot_be_stored_once_is_stored_at_finish(tmp_path, monkeypatch):
    failing_annotate(monkeypatch, 1)
    seen: list[str] = []

    async def hook(hook_type: str, payload: dict) -> dict:
        seen.append(hook_type)
        return {}

    data = os.urandom(1000)
    async with client_for(TusApp(Config(store=FileStore(tmp_path), digest="sha256", hooks=hook))) as client:
        url = (await client.post("/files/", headers={**TUS, "Upload-Length": "1000"})).headers["location"]
        r = await client.patch(url, content=data, headers={**PATCH, "Upload-Offset": "0"})
        assert r.status_code == 204
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)
    for _ in range(200):
        if "post-finish" in seen:
            break
        await asyncio.sleep(0.01)
    assert "post-finish" in seen


async def test_storage_failing_at_finish_costs_the_digest_only_and_a_later_load_repairs_it(tmp_path, monkeypatch):
    """Both tries fail: the PATCH still succeeds and post-finish runs, without a digest; the state of the
    earlier PATCH is still there, so the next request that loads the upload reads the gap and stores it."""
    left = failing_annotate(monkeypatch, 2)
    completed: list[UploadInfo] = []
    app = TusApp(Config(store=FileStore(tmp_path), digest="sha256"))
    data = os.urandom(3000)
    async with app.events.completed() as events, client_for(app) as client:
        url = (await client.post("/files/", headers={**TUS, "Upload-Length": "3000"})).headers["location"]
        await patch_all(client, url, data, [1000])
        completed.append((await events.get()).upload)
        assert left["failures"] == 0
        assert "Repr-Digest" not in completed[0].storage
        reads = record_reads(monkeypatch)
        assert (await client.head(url, headers=TUS)).headers["repr-digest"] == sha256_field(data)
        assert reads == [(1000, 3000)]


async def test_the_request_that_completes_a_final_answers_with_its_digest(tmp_path):
    """The partials finished in another process: the HEAD that concatenates the final already has the digest."""
    parts = [os.urandom(3000), os.urandom(5)]

    def client():
        return client_for(TusApp(Config(store=FileStore(tmp_path), digest="sha256")))

    async with client() as c:
        urls = []
        for part in parts:
            r = await c.post("/files/", headers={**TUS, "Upload-Length": str(len(part)), "Upload-Concat": "partial"})
            urls.append(r.headers["location"])
        await c.patch(urls[1], content=parts[1], headers={**PATCH, "Upload-Offset": "0"})
        r = await c.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls)})
        final = r.headers["location"]
    async with client() as c:
        await c.patch(urls[0], content=parts[0], headers={**PATCH, "Upload-Offset": "0"})
    async with client() as c:
        first = await c.head(final, headers=TUS)
    assert first.headers["upload-offset"] == "3005"
    assert first.headers["repr-digest"] == sha256_field(parts[0] + parts[1])


async def test_fed_chunks_are_hashed_in_order_whatever_their_type():
    """Running.feed hashes bytes behind in a thread a batch at a time, and other buffers at once after what came
    before them: the digest is that of the chunks in order, also across batch boundaries."""
    rng = random.Random(3)
    pieces = [os.urandom(rng.randint(1, 300_000)) for _ in range(40)]
    kinds = [bytes, bytearray, memoryview]

    async def chunks():
        for piece in pieces:
            yield rng.choice(kinds)(piece)

    running = digests.Running(0, [hashstate.ResumableHash("sha256"), hashstate.ResumableHash("sha512")])
    async for _ in running.feed(chunks()):
        pass
    await running.settle()
    data = b"".join(pieces)
    assert running.fed == len(data) > 2 * digests.BATCH
    assert [h.digest() for h in running.hashes] == [hashlib.sha256(data).digest(), hashlib.sha512(data).digest()]
