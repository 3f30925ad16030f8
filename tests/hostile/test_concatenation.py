"""Concatenation under attack: writes into finals, repeated and failed concatenations, unbounded partial lists,
lengths past int64, pre-access bypassed through a final, and copies that block the event loop.

The attacks, as found on an earlier main:

- a draft ``PATCH`` (``application/partial-upload``, offset 0) wrote into a final upload, and every ``HEAD``
  afterwards concatenated again on top: a final of ``Upload-Length`` 5 held 24 bytes after three ``HEAD`` s;
- one ~800 KB ``POST`` naming a 10-byte partial 20,000 times stalled every connection for about 2 s;
- three partials of ``Upload-Length`` 2^63-1 made a final of length 27670116110564327421;
- client B, refused ``GET`` of client A's partial by the pre-access hook, created ``final;<A's partial>`` and
  downloaded A's bytes from it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time

import httpx
import pytest

from pytusd.hooks import Hooks, PythonHookBackend
from pytusd.stores import file as file_store

from ..conftest import PATCH_TYPE, TUS, patch

DRAFT_VERSIONS = (3, 4, 5, 6, 7, 8)


async def partial(client: httpx.AsyncClient, data: bytes | None, length: int | None = None, **headers: str) -> str:
    """A partial upload, complete with ``data`` (or empty of ``length`` bytes when data is None)."""
    size = len(data) if data is not None else length
    h = {**TUS, "Upload-Length": str(size), "Upload-Concat": "partial", **headers}
    if data:
        h.update(PATCH_TYPE)
    r = await client.post("/files/", headers=h, content=data or b"")
    assert r.status_code == 201, r.text
    return r.headers["location"]


async def final(client: httpx.AsyncClient, urls: list[str], **headers: str) -> httpx.Response:
    return await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls), **headers})


def draft_append(version: int, offset: int) -> dict[str, str]:
    headers = {"Upload-Draft-Interop-Version": str(version), "Upload-Offset": str(offset)}
    headers.update({"Upload-Incomplete": "?1"} if version == 3 else {"Upload-Complete": "?0"})
    if version >= 6:
        headers["Content-Type"] = "application/partial-upload"
    return headers


# -- the append rule holds for finals in every protocol -----------------------------------------------------------


@pytest.mark.parametrize("version", DRAFT_VERSIONS)
async def test_draft_patch_cannot_write_into_a_final(client_factory, upload_dir, version):
    client = client_factory(enable_experimental_protocol=True)
    a = await partial(client, None, length=2)  # unfinished: the final waits (concatenation-unfinished)
    b = await partial(client, b"cde")
    r = await final(client, [a, b])
    assert r.status_code == 201, r.text
    url = r.headers["location"]
    r = await client.patch(url, headers=draft_append(version, 0), content=b"xyzzy")
    assert r.status_code == 403 and "ERR_MODIFY_FINAL" in r.text
    assert (await patch(client, url, 0, b"xyzzy")).status_code == 403  # tus 1.0, as before
    assert (await patch(client, a, 0, b"ab")).status_code == 204  # the last partial completes the final
    for _ in range(3):
        head = await client.head(url, headers=TUS)
        assert head.headers["upload-offset"] == "5"
    final_id = url.rsplit("/", 1)[1]
    assert (upload_dir / final_id).read_bytes() == b"abcde"
    assert (await client.get(url)).content == b"abcde"


async def test_a_final_has_no_bytes_until_concatenated(client_factory):
    client = client_factory()
    a = await partial(client, None, length=2)
    url = (await final(client, [a])).headers["location"]
    r = await client.get(url)
    assert r.status_code == 200 and r.content == b""  # as tusd: what is stored so far, which is nothing
    head = await client.head(url, headers=TUS)
    assert "upload-offset" not in head.headers


# -- concatenation is all-or-nothing and repeatable ------------------------------------------------------------


async def test_a_concatenation_that_fails_part_way_is_redone_from_the_start(client_factory, upload_dir, monkeypatch):
    """Disk full in the middle of copying: nothing half-written becomes the final; the retry is exact."""
    client = client_factory()
    parts = [bytes([65 + i]) * (300_000 + i) for i in range(3)]
    urls = [await partial(client, None, length=len(p)) for p in parts]
    url = (await final(client, urls)).headers["location"]
    final_id = url.rsplit("/", 1)[1]
    for u, p in zip(urls[:-1], parts[:-1], strict=True):
        assert (await patch(client, u, 0, p)).status_code == 204

    real_copy = file_store._copy_range
    calls = []

    def failing_copy(source, target, size, position):
        calls.append(position)
        if position > 0:  # past the first partial, whose bytes are in the temporary file already
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(source, target, size, position)

    monkeypatch.setattr(file_store, "_copy_range", failing_copy)
    r = await patch(client, urls[-1], 0, parts[-1])  # completes the last partial: the final's concat fails
    assert r.status_code == 204, r.text  # the partial's PATCH succeeded; the final's concatenation did not
    assert calls == [0, 300_000]
    assert (upload_dir / final_id).stat().st_size == 0
    assert not (upload_dir / (final_id + ".concat")).exists()
    head = await client.head(url, headers=TUS)  # still full: HEAD tries again and says so
    assert head.status_code == 507
    monkeypatch.setattr(file_store, "_copy_range", real_copy)
    for _ in range(3):  # the retry, then nothing more: repeated HEADs never concatenate again
        head = await client.head(url, headers=TUS)
        assert head.status_code == 200 and head.headers["upload-offset"] == str(sum(map(len, parts)))
    assert (upload_dir / final_id).read_bytes() == b"".join(parts)


async def test_a_concatenation_cut_by_a_crash_is_redone_exactly(client_factory, upload_dir):
    """What a process that died mid-concatenation leaves (a half temporary file, an empty final) is repaired."""
    client = client_factory()
    urls = [await partial(client, None, length=4) for _ in range(2)]
    url = (await final(client, urls)).headers["location"]
    final_id = url.rsplit("/", 1)[1]
    (upload_dir / (final_id + ".concat")).write_bytes(b"junk from a dead process" * 1000)
    for u, data in zip(urls, (b"abcd", b"efgh"), strict=True):
        assert (await patch(client, u, 0, data)).status_code == 204
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-offset"] == "8"
    assert (upload_dir / final_id).read_bytes() == b"abcdefgh"
    assert not (upload_dir / (final_id + ".concat")).exists()


async def test_concatenation_does_not_block_the_event_loop(client_factory):
    """The copy runs in a thread: a ticker on the loop keeps ticking while 2 x 96 MiB are concatenated."""
    client = client_factory()
    size = 96 << 20
    urls = []
    for _ in range(2):
        url = await partial(client, None, length=size)
        for offset in range(0, size, 8 << 20):
            assert (await patch(client, url, offset, os.urandom(1024) * 8192)).status_code == 204
        urls.append(url)
    gaps = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    r = await final(client, urls)
    took = time.perf_counter() - started
    task.cancel()
    assert r.status_code == 201, r.text
    assert took > 0.01 and len(gaps) >= 2  # the ticker did run during the concatenation
    assert max(gaps) < 0.05, f"the event loop stalled {max(gaps) * 1000:.0f} ms during a {took:.2f} s concat"


# -- bounded inputs ---------------------------------------------------------------------------------------------


async def test_the_number_of_partials_is_limited_before_any_is_looked_up(client_factory, monkeypatch):
    client = client_factory(max_concat_partials=16)
    url = await partial(client, b"0123456789")
    looked_up = []
    store = client.app.handlers.store
    real_get = store.get

    async def counting_get(upload_id):
        looked_up.append(upload_id)
        return await real_get(upload_id)

    monkeypatch.setattr(store, "get", counting_get)
    started = time.perf_counter()
    r = await final(client, [url] * 20_000)  # the attack: ~800 KB of header naming one partial 20,000 times
    assert r.status_code == 400 and "ERR_INVALID_CONCAT" in r.text and "16" in r.text
    assert looked_up == [] and time.perf_counter() - started < 0.5
    r = await final(client, [url] * 16)  # the limit itself is allowed, and naming a partial twice is fine
    assert r.status_code == 201
    assert (await client.head(r.headers["location"], headers=TUS)).headers["upload-offset"] == "160"


async def test_the_default_limit_of_partials(client_factory):
    client = client_factory()
    assert client.app.config.max_concat_partials == 128
    url = await partial(client, b"x")
    assert (await final(client, [url] * 129)).status_code == 400
    assert (await final(client, [url] * 128)).status_code == 201


async def test_a_final_can_not_pass_int64(client_factory, upload_dir):
    client = client_factory()
    big = [await partial(client, None, length=2**63 - 1) for _ in range(3)]
    r = await final(client, big)
    assert r.status_code == 413 and "ERR_MAX_SIZE_EXCEEDED" in r.text
    assert len([n for n in os.listdir(upload_dir) if n.endswith(".info")]) == 3  # no final was stored


async def test_a_final_can_not_pass_max_size(client_factory):
    client = client_factory(max_size=10)
    urls = [await partial(client, b"123456"), await partial(client, b"123456")]
    r = await final(client, urls)
    assert r.status_code == 413 and "ERR_MAX_SIZE_EXCEEDED" in r.text


# -- the access rule covers the partials a final reads ---------------------------------------------------------


def owner_only_hook(calls: list[tuple[str, str]]):
    """pre-access: only the client whose Authorization matches the upload's ``owner`` metadata may touch it."""

    async def hook(hook_type: str, request: dict) -> dict | None:
        event = request["Event"]
        auth = event["HTTPRequest"]["Header"].get("Authorization", [""])[0]
        calls.append((event["HTTPRequest"]["Method"], event["Upload"]["ID"]))
        if hook_type == "pre-access" and event["Upload"]["MetaData"].get("owner") != auth:
            return {"RejectUpload": True}
        return None

    return hook


@pytest.mark.parametrize("unfinished", [False, True], ids=["finished partial", "unfinished partial"])
async def test_pre_access_is_not_bypassed_through_concatenation(client_factory, upload_dir, unfinished):
    calls: list[tuple[str, str]] = []
    client = client_factory(hooks=Hooks(PythonHookBackend(owner_only_hook(calls)), ("pre-access",)))
    alice = {"Authorization": "alice"}
    owner = "owner YWxpY2U="  # base64("alice")
    if unfinished:
        a = await partial(client, None, length=6, **{"Upload-Metadata": owner})
    else:
        a = await partial(client, b"secret", **{"Upload-Metadata": owner})
    assert (await client.get(a, headers={"Authorization": "bob"})).status_code == 403
    r = await final(client, [a], Authorization="bob", **{"Upload-Metadata": "owner Ym9i"})
    assert r.status_code == 403 and "ERR_ACCESS_DENIED" in r.text
    assert ("POST", a.rsplit("/", 1)[1]) in calls  # the hook saw the partial, with bob's POST
    assert len([n for n in os.listdir(upload_dir) if n.endswith(".info")]) == 1  # no final for bob
    r = await final(client, [a], **alice, **{"Upload-Metadata": owner})  # alice may
    assert r.status_code == 201, r.text


# -- through a real pytusd process: other connections are served meanwhile -----------------------------------------


class HealthProbe:
    """GETs /health every 10 ms on its own connection, in a thread, and keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        import threading

        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert client.get(self.url).status_code == 200
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join()


@pytest.mark.e2e
def test_hostile_concatenation_requests_do_not_stall_a_real_server(pytusd_factory):
    server = pytusd_factory()
    files = server.url  # http://127.0.0.1:<port>/files/
    health = files.replace("/files/", "/health")

    def sync_partial(length: int, data: bytes = b"") -> str:
        headers = {**TUS, "Upload-Length": str(length), "Upload-Concat": "partial"}
        r = httpx.post(files, headers={**headers, **PATCH_TYPE} if data else headers, content=data)
        assert r.status_code == 201, r.text
        return r.headers["location"]

    tiny = sync_partial(10, b"0123456789")
    size = 128 << 20
    big = [sync_partial(size) for _ in range(2)]
    block = os.urandom(1 << 20) * 16
    for url in big:
        for offset in range(0, size, len(block)):
            r = httpx.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": str(offset)}, content=block,
                            timeout=60)
            assert r.status_code == 204, r.text
    with HealthProbe(health) as probe:
        relative = "/files/" + tiny.rsplit("/", 1)[1]  # ~800 KB of header, within the 1 MiB head limit
        r = httpx.post(files, headers={**TUS, "Upload-Concat": "final;" + " ".join([relative] * 20_000)}, timeout=30)
        assert r.status_code == 400 and "ERR_INVALID_CONCAT" in r.text
        r = httpx.post(files, headers={**TUS, "Upload-Concat": f"final;{big[0]} {big[1]}"}, timeout=60)
        assert r.status_code == 201, r.text
    head = httpx.head(r.headers["location"], headers=TUS)
    assert head.headers["upload-offset"] == str(2 * size)
    assert len(probe.latencies) >= 5
    print(f"/health: {len(probe.latencies)} probes, slowest {max(probe.latencies) * 1000:.1f} ms")
    assert max(probe.latencies) < 0.25, f"/health waited {max(probe.latencies) * 1000:.0f} ms"
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("protocol", [None, 3, 6, 8], ids=lambda v: "tus" if v is None else f"draft-v{v}")
@pytest.mark.parametrize("body", [b"", b"xyz"], ids=["empty", "with data"])
async def test_a_complete_upload_is_never_finished_again(client_factory, protocol, body):
    """Found by review: a draft append that wrote nothing to a complete upload ran pre-finish and post-finish
    again (any client could repeat it at will). A complete upload is answered with its offset, nothing more."""
    seen: list[str] = []

    async def hook(hook_type: str, request: dict) -> None:
        seen.append(hook_type)

    hooks = Hooks(PythonHookBackend(hook), ("pre-finish", "post-finish"))
    client = client_factory(enable_experimental_protocol=True, hooks=hooks)
    url = await partial(client, b"abc")  # a partial: its completion also looks for finals waiting on it
    await hooks.drain()
    assert seen == ["pre-finish", "post-finish"]
    if protocol is None:
        r = await patch(client, url, 3, body)
    else:
        headers = draft_append(protocol, 3)
        headers.update({"Upload-Incomplete": "?0"} if protocol == 3 else {"Upload-Complete": "?1"})
        r = await client.patch(url, headers=headers, content=body)
    assert r.status_code == 204 and r.headers["upload-offset"] == "3", r.text
    await hooks.drain()
    assert seen == ["pre-finish", "post-finish"]
    assert client.app.metrics.snapshot().uploads_finished == 1


async def test_a_final_whose_partial_was_replaced_stays_unfinished_and_can_be_deleted(client_factory):
    """Found by review: a partial deleted and made again under its ID with another length made every request to
    the final answer 500, DELETE included. Like a final whose partial is gone, it stays unfinished."""

    async def hook(hook_type: str, request: dict) -> dict:
        return {"ChangeFileInfo": {"ID": "alice/part1"}} if hook_type == "pre-create" and \
            request["Event"]["Upload"]["IsPartial"] else {}

    client = client_factory(hooks=Hooks(PythonHookBackend(hook), ("pre-create",)))
    part = await partial(client, None, length=3)
    url = (await final(client, [part])).headers["location"]
    assert (await client.delete(part, headers=TUS)).status_code == 204
    assert await partial(client, b"abcd") == part  # the same ID, another length
    head = await client.head(url, headers=TUS)
    assert head.status_code == 200 and "upload-offset" not in head.headers
    assert (await client.delete(url, headers=TUS)).status_code == 204


async def test_a_partial_deleted_during_concatenation_leaves_the_final_unfinished(client_factory, upload_dir,
                                                                                monkeypatch):
    """Found by review: a partial deleted while the final's copy ran made the POST answer 500. The final stays
    unfinished (as with a partial gone before), nothing half-copied is left, and the copy ran in the copy threads."""
    import threading

    client = client_factory()
    a = await partial(client, b"first")
    b = await partial(client, b"second")
    real_copy = file_store._copy_range
    threads = []

    def copy_then_lose_b(source, target, size, position):
        threads.append(threading.current_thread().name)
        real_copy(source, target, size, position)
        (upload_dir / b.rsplit("/", 1)[1]).unlink(missing_ok=True)  # the DELETE of b lands meanwhile

    monkeypatch.setattr(file_store, "_copy_range", copy_then_lose_b)
    r = await final(client, [a, b])
    assert r.status_code == 201, r.text
    final_id = r.headers["location"].rsplit("/", 1)[1]
    head = await client.head(r.headers["location"], headers=TUS)
    assert head.status_code == 200 and "upload-offset" not in head.headers
    assert (upload_dir / final_id).read_bytes() == b""
    assert not (upload_dir / (final_id + ".concat")).exists()
    assert threads and all(name.startswith("pytusd-copy") for name in threads)
