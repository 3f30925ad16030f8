"""tus 1.0 core, creation, creation-defer-length, creation-with-upload and termination through TusApp.

Named by item of reference/tus-protocol.md. The app runs in-process (httpx's ASGI transport); the real server and
real clients are in tests/e2e.
"""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from pytusd import Config, FileStore, TusApp

from tests.conftest import PATCH_TYPE, TUS, create, make_app, patch, raw_request


# -- core -----------------------------------------------------------------------------------------------------------


async def test_p01_every_response_carries_tus_resumable(client):
    url = await create(client)
    for response in (
        await client.options("/files/"),
        await client.head(url),
        await patch(client, url, 0, b"hello"),
        await client.get(url),
        await client.head("/files/nope"),
    ):
        assert response.headers["tus-resumable"] == "1.0.0"
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_p02_unsupported_version_is_412_and_not_processed(client, upload_dir):
    r = await client.post("/files/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    assert r.status_code == 412
    assert r.text == "ERR_UNSUPPORTED_VERSION: Tus-Resumable must be 1.0.0\n"
    assert r.headers["tus-version"] == "1.0.0"
    r = await client.post("/files/", headers={"Upload-Length": "5"})
    assert r.status_code == 412
    assert not upload_dir.exists() or os.listdir(upload_dir) == []


async def test_p02_get_and_head_need_no_tus_resumable(client):
    url = await create(client, 0)
    assert (await client.head(url)).status_code == 200
    assert (await client.get(url)).status_code == 200


async def test_p03_p04_p20_options(client):
    r = await client.options("/files/")
    assert r.status_code == 200
    assert r.headers["tus-version"] == "1.0.0"
    assert r.headers["tus-extension"] == (
        "creation,creation-with-upload,termination,concatenation,concatenation-unfinished,creation-defer-length,"
        "checksum"
    )
    assert "tus-max-size" not in r.headers


async def test_p05_tus_max_size_when_limited(client_factory):
    client = client_factory(max_size=1000)
    r = await client.options("/files/")
    assert r.headers["tus-max-size"] == "1000"


async def test_p21_tus_resumable_on_options_is_ignored(client):
    r = await client.options("/files/", headers={"Tus-Resumable": "9.9.9"})
    assert r.status_code == 200


async def test_p07_method_override_on_post(client):
    url = await create(client)
    r = await client.post(
        url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}, content=b"hi"
    )
    assert r.status_code == 204 and r.headers["upload-offset"] == "2"
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 204
    assert (await client.head(url)).status_code == 404


# -- HEAD -----------------------------------------------------------------------------------------------------------


async def test_p08_p09_p11_p12_head(client):
    url = await create(client, 11)
    r = await client.head(url)
    assert r.status_code == 200
    assert r.headers["upload-offset"] == "0"
    assert r.headers["upload-length"] == "11"
    assert r.headers["cache-control"] == "no-store"
    await patch(client, url, 0, b"hello world")
    r = await client.head(url)
    assert r.headers["upload-offset"] == "11"


async def test_p10_head_unknown_is_404_without_offset_or_body(client):
    r = await client.head("/files/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404
    assert "upload-offset" not in r.headers
    assert r.content == b""


# -- PATCH ----------------------------------------------------------------------------------------------------------


async def test_p13_p16_patch_appends_and_reports_offset(client, upload_dir):
    url = await create(client, 11)
    r = await patch(client, url, 0, b"hello ")
    assert r.status_code == 204 and r.headers["upload-offset"] == "6"
    r = await patch(client, url, 6, b"world")
    assert r.status_code == 204 and r.headers["upload-offset"] == "11"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello world"


async def test_p14_wrong_content_type_is_400(client):
    url = await create(client)
    r = await client.patch(url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_CONTENT_TYPE")


async def test_p15_offset_mismatch_409_resource_unchanged(client, upload_dir):
    url = await create(client, 11)
    await patch(client, url, 0, b"hello")
    r = await patch(client, url, 3, b"XXXX")
    assert r.status_code == 409 and r.text.startswith("ERR_MISMATCHED_OFFSET")
    r = await patch(client, url, 9, b"XX")
    assert r.status_code == 409
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello"


@pytest.mark.parametrize("offset", ["-1", "abc", "", "1.0"])
async def test_p06_invalid_offset_is_400(client, offset):
    url = await create(client)
    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": offset}, content=b"x")
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_OFFSET")


async def test_p17_patch_unknown_is_404(client):
    r = await patch(client, "/files/0123456789abcdef0123456789abcdef", 0, b"x")
    assert r.status_code == 404 and r.text.startswith("ERR_UPLOAD_NOT_FOUND")


async def test_patch_past_length_is_413_and_nothing_written(client, upload_dir):
    url = await create(client, 5)
    r = await patch(client, url, 0, b"too long")
    assert r.status_code == 413 and r.text.startswith("ERR_UPLOAD_SIZE_EXCEEDED")
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b""


async def test_patch_on_complete_upload_is_204_without_reading(client):
    url = await create(client, 2)
    await patch(client, url, 0, b"ok")
    r = await patch(client, url, 2, b"")
    assert r.status_code == 204 and r.headers["upload-offset"] == "2"


async def test_p19_chunked_body_over_the_length_keeps_the_allowed_part(client, upload_dir):
    url = await create(client, 4)

    async def body():
        yield b"ab"
        yield b"cdef"

    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=body())
    assert r.status_code == 413
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"abcd"
    assert (await client.head(url)).headers["upload-offset"] == "4"


# -- creation -------------------------------------------------------------------------------------------------------


async def test_p28_creation_201_with_absolute_location(client, upload_dir):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    location = r.headers["location"]
    assert location.startswith("http://tus.test/files/")
    upload_id = location.rsplit("/", 1)[1]
    assert len(upload_id) == 32
    info = json.loads((upload_dir / f"{upload_id}.info").read_text())
    assert info["ID"] == upload_id and info["Size"] == 10 and info["SizeIsDeferred"] is False
    assert info["Storage"] == {
        "Type": "filestore",
        "Path": str(upload_dir / upload_id),
        "InfoPath": str(upload_dir / f"{upload_id}.info"),
    }


async def test_p24_creation_without_length_is_400(client):
    r = await client.post("/files/", headers=TUS)
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_UPLOAD_LENGTH")


async def test_p26_zero_length_upload_is_complete_at_once(client):
    url = await create(client, 0)
    r = await client.head(url)
    assert r.headers["upload-offset"] == "0" and r.headers["upload-length"] == "0"


async def test_p27_length_over_max_is_413(client_factory):
    client = client_factory(max_size=10)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "11"})
    assert r.status_code == 413 and r.text.startswith("ERR_MAX_SIZE_EXCEEDED")


async def test_p29_p31_metadata_is_stored_and_echoed(client):
    meta = "filename " + base64.b64encode("naïve.txt".encode()).decode() + ",is_confidential"
    url = await create(client, 1, **{"Upload-Metadata": meta})
    r = await client.head(url)
    assert r.headers["upload-metadata"] == meta


async def test_p29_empty_metadata_header_is_accepted(client):
    url = await create(client, 1, **{"Upload-Metadata": ""})
    r = await client.head(url)
    assert "upload-metadata" not in r.headers


async def test_upload_length_beyond_int64_is_400(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "9223372036854775808"})
    assert r.status_code == 400


async def test_repeated_length_header_is_rejected(client):
    r = await client.post("/files/", headers=[("Tus-Resumable", "1.0.0"), ("Upload-Length", "1"), ("Upload-Length", "2")])
    assert r.status_code == 400


# -- concatenation --------------------------------------------------------------------------------------------------


async def _partial(client, data: bytes, **headers: str) -> str:
    url = await create(client, len(data), **{"Upload-Concat": "partial", **headers})
    if data:
        assert (await patch(client, url, 0, data)).status_code == 204
    return url


async def test_p59_p67_partial_upload(client):
    url = await _partial(client, b"abc")
    r = await client.head(url)
    assert r.headers["upload-concat"] == "partial" and r.headers["upload-offset"] == "3"


async def test_p60_p64_p66_p69_final_concatenates_in_order_with_reuse(client, upload_dir):
    a = await _partial(client, b"hello ")
    b = await _partial(client, b"world")
    relative_b = "/files/" + b.rsplit("/", 1)[1]
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {relative_b} {a}"})
    assert r.status_code == 201
    final = r.headers["location"]
    assert (await client.get(final)).content == b"hello worldhello "
    head = await client.head(final)
    assert head.headers["upload-length"] == head.headers["upload-offset"] == "17"
    assert head.headers["upload-concat"] == f"final;{a} {b} {a}"
    # Partials stay usable in another final.
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{b}"})
    assert (await client.get(r.headers["location"])).content == b"world"


async def test_p63_partial_metadata_does_not_carry_over(client):
    a = await _partial(client, b"x", **{"Upload-Metadata": "filename " + base64.b64encode(b"part").decode()})
    meta = "filename " + base64.b64encode(b"whole.txt").decode()
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}", "Upload-Metadata": meta})
    assert (await client.head(r.headers["location"])).headers["upload-metadata"] == meta


async def test_p62_p66_final_of_unfinished_partials_completes_with_the_last_one(client, upload_dir):
    a = await create(client, 5, **{"Upload-Concat": "partial"})
    b = await create(client, 3, **{"Upload-Concat": "partial"})
    await patch(client, a, 0, b"ab")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert r.status_code == 201
    final = r.headers["location"]
    head = await client.head(final)
    assert "upload-offset" not in head.headers  # item 66: no offset until concatenated
    assert head.headers["upload-length"] == "8"  # item 68: the length is known already
    await patch(client, a, 2, b"cde")
    assert "upload-offset" not in (await client.head(final)).headers
    await patch(client, b, 0, b"xyz")  # the last partial completes the final
    head = await client.head(final)
    assert head.headers["upload-offset"] == "8"
    assert (upload_dir / final.rsplit("/", 1)[1]).read_bytes() == b"abcdexyz"


async def test_concatenation_unfinished_across_processes(tmp_path, upload_dir):
    """The final was created by another process: it is concatenated when next loaded."""
    import httpx

    first, second = make_app(tmp_path), make_app(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://tus.test") as one, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://tus.test") as two:
        a = await create(one, 2, **{"Upload-Concat": "partial"})
        final = (await one.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {a}"})).headers["location"]
        await patch(two, a, 0, b"hi")
        assert (await two.head(final)).headers["upload-offset"] == "4"
        assert (await one.get(final)).content == b"hihi"


async def test_partials_finishing_together_concatenate_once(client, upload_dir):
    import asyncio

    parts = [await create(client, 4, **{"Upload-Concat": "partial"}) for _ in range(4)]
    final = (await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)})).headers[
        "location"
    ]
    results = await asyncio.gather(*(patch(client, p, 0, f"{i}{i}{i}{i}".encode()) for i, p in enumerate(parts)))
    assert all(r.status_code == 204 for r in results)
    assert (await client.get(final)).content == b"0000111122223333"


async def test_p62_without_concatenation_unfinished_unfinished_partials_are_400(client_factory):
    client = client_factory(disable_concatenation_unfinished=True)
    extensions = (await client.options("/files/")).headers["tus-extension"].split(",")
    assert "concatenation" in extensions and "concatenation-unfinished" not in extensions
    a = await create(client, 5, **{"Upload-Concat": "partial"})
    await patch(client, a, 0, b"ab")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}"})
    assert r.status_code == 400 and r.text.startswith("ERR_UPLOAD_NOT_FINISHED")


async def test_deferred_partial_cannot_be_concatenated(client):
    a = await create(client, None, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}"})
    assert r.status_code == 400 and r.text.startswith("ERR_UPLOAD_NOT_FINISHED")


async def test_p65_patch_on_final_is_403(client):
    a = await _partial(client, b"ab")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}"})
    final = r.headers["location"]
    r = await patch(client, final, 2, b"x")
    assert r.status_code == 403 and r.text.startswith("ERR_MODIFY_FINAL")
    assert (await client.get(final)).content == b"ab"


async def test_final_with_body_is_403(client):
    a = await _partial(client, b"ab")
    r = await client.post(
        "/files/", headers={**TUS, **PATCH_TYPE, "Upload-Concat": f"final;{a}"}, content=b"more"
    )
    assert r.status_code == 403


async def test_final_of_non_partial_is_400(client):
    plain = await create(client, 1)
    await patch(client, plain, 0, b"x")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{plain}"})
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_CONCAT")


@pytest.mark.parametrize(
    "header",
    ["final;", "final; ", "finale;x", "partial;x", "bogus"],
)
async def test_invalid_upload_concat_is_400(client, header):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": header})
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_CONCAT")


@pytest.mark.parametrize(
    "url",
    [
        "http://tus.test/other/abc",
        "/files/../secret",
        "/files/%2e%2e/secret",
        "http://tus.test/files/0123456789abcdef0123456789abcdef",
        "/files/",
    ],
)
async def test_partial_urls_outside_or_unknown_are_404(client, tmp_path, url):
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "secret.info").write_text(json.dumps({"ID": "secret", "Size": 1, "IsPartial": True}))
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{url}"})
    assert r.status_code == 404, r.text


async def test_final_over_max_size_is_413(client_factory):
    client = client_factory(max_size=5)
    a = await _partial(client, b"abc")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {a}"})
    assert r.status_code == 413


async def test_concatenation_disabled(client_factory):
    client = client_factory(disable_concatenation=True)
    assert "concatenation" not in (await client.options("/files/")).headers["tus-extension"]
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "partial", "Upload-Length": "1"})
    assert r.status_code == 400 and r.text.startswith("ERR_CONCATENATION_UNSUPPORTED")


# -- checksum -------------------------------------------------------------------------------------------------------


def _digest(algorithm: str, data: bytes) -> str:
    import hashlib
    import zlib

    raw = zlib.crc32(data).to_bytes(4, "big") if algorithm == "crc32" else hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(raw).decode()}"


async def test_p46_p53_checksum_advertised(client):
    r = await client.options("/files/")
    assert "checksum" in r.headers["tus-extension"].split(",")
    assert r.headers["tus-checksum-algorithm"] == "sha1,md5,sha256,sha512,crc32"


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_p47_p49_p51_matching_checksum_is_stored(client, upload_dir, algorithm):
    url = await create(client, 11)
    r = await patch(client, url, 0, b"hello ", **{"Upload-Checksum": _digest(algorithm, b"hello ")})
    assert r.status_code == 204 and r.headers["upload-offset"] == "6"
    r = await patch(client, url, 6, b"world", **{"Upload-Checksum": _digest(algorithm, b"world")})
    assert r.status_code == 204 and r.headers["upload-offset"] == "11"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello world"
    assert not list(upload_dir.glob("*.pending"))


async def test_p49_p50_mismatch_is_460_and_the_chunk_is_discarded(client, upload_dir):
    url = await create(client, 11)
    await patch(client, url, 0, b"hello ")
    r = await patch(client, url, 6, b"world", **{"Upload-Checksum": _digest("sha1", b"WORLD")})
    assert r.status_code == 460 and r.text.startswith("ERR_CHECKSUM_MISMATCH")
    assert (await client.head(url)).headers["upload-offset"] == "6"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello "
    assert not list(upload_dir.glob("*.pending"))


@pytest.mark.parametrize("header", ["sha3 AAAA", "SHA1 AAAA", "md4 AAAA"])
async def test_p49_p52_unsupported_algorithm_is_400(client, upload_dir, header):
    url = await create(client, 5)
    r = await patch(client, url, 0, b"hello", **{"Upload-Checksum": header})
    assert r.status_code == 400 and r.text.startswith("ERR_UNSUPPORTED_CHECKSUM_ALGORITHM")
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b""


@pytest.mark.parametrize("header", ["sha1", "sha1 ", "sha1 !!!", "sha1 AAA"])
async def test_p49_malformed_checksum_is_400(client, header):
    url = await create(client, 5)
    r = await patch(client, url, 0, b"hello", **{"Upload-Checksum": header})
    assert r.status_code == 400


async def test_p47_checksum_on_creation_with_upload(client, upload_dir):
    good = await client.post(
        "/files/",
        headers={**TUS, **PATCH_TYPE, "Upload-Length": "5", "Upload-Checksum": _digest("sha256", b"hello")},
        content=b"hello",
    )
    assert good.status_code == 201 and good.headers["upload-offset"] == "5"
    bad = await client.post(
        "/files/",
        headers={**TUS, **PATCH_TYPE, "Upload-Length": "5", "Upload-Checksum": _digest("sha256", b"HELLO")},
        content=b"hello",
    )
    assert bad.status_code == 460
    location = bad.headers["location"]  # the upload exists; the client may send the chunk again
    assert (await client.head(location)).headers["upload-offset"] == "0"
    r = await patch(client, location, 0, b"hello", **{"Upload-Checksum": _digest("sha256", b"hello")})
    assert r.status_code == 204


async def test_p50_chunk_that_ends_early_is_not_kept(client, upload_dir):
    url = await create(client, 10)

    async def body():
        yield b"01234"
        yield b"5678901"  # over the length: the body ends with 413 before the checksum can be checked

    r = await client.patch(
        url,
        headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0", "Upload-Checksum": _digest("sha1", b"0123456789")},
        content=body(),
    )
    assert r.status_code == 413
    assert (await client.head(url)).headers["upload-offset"] == "0"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b""


async def test_unverified_bytes_left_by_a_crash_are_not_counted(client, upload_dir):
    """A process died between writing a checksummed chunk and checking it: the marker says where it began."""
    url = await create(client, 10)
    await patch(client, url, 0, b"0123")
    upload_id = url.rsplit("/", 1)[1]
    with open(upload_dir / upload_id, "ab") as f:
        f.write(b"junk")
    (upload_dir / f"{upload_id}.pending").write_text("4")
    assert (await client.head(url)).headers["upload-offset"] == "4"
    assert (await client.get(url)).content == b"0123"
    r = await patch(client, url, 4, b"45")
    assert r.status_code == 204 and r.headers["upload-offset"] == "6"
    assert (upload_dir / upload_id).read_bytes() == b"012345"
    assert not (upload_dir / f"{upload_id}.pending").exists()


# -- creation-defer-length ------------------------------------------------------------------------------------------


async def test_p34_p36_deferred_length_head(client):
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await client.head(url)
    assert r.headers["upload-defer-length"] == "1"
    assert "upload-length" not in r.headers


async def test_p35_length_declared_on_later_patch_once(client, upload_dir):
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await patch(client, url, 0, b"abc")
    assert r.status_code == 204 and r.headers["upload-offset"] == "3"
    r = await patch(client, url, 3, b"de", **{"Upload-Length": "5"})
    assert r.status_code == 204 and r.headers["upload-offset"] == "5"
    r = await client.head(url)
    assert r.headers["upload-length"] == "5" and "upload-defer-length" not in r.headers
    r = await patch(client, url, 5, b"", **{"Upload-Length": "6"})
    assert r.status_code == 204  # already complete: nothing to change
    url2 = await create(client, 10)
    r = await patch(client, url2, 0, b"a", **{"Upload-Length": "10"})
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_UPLOAD_LENGTH")


async def test_p35_declared_length_below_offset_is_400(client):
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    await patch(client, url, 0, b"abcd")
    r = await patch(client, url, 4, b"", **{"Upload-Length": "2"})
    assert r.status_code == 400


async def test_deferred_upload_cannot_exceed_max_size(client_factory):
    client = client_factory(max_size=8)
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await patch(client, url, 0, b"0123456789")
    assert r.status_code == 413

    async def body():
        yield b"01234"
        yield b"56789"

    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=body())
    assert r.status_code == 413
    assert (await client.head(url)).headers["upload-offset"] == "8"


# -- creation-with-upload -------------------------------------------------------------------------------------------


async def test_p38_p39_creation_with_upload(client, upload_dir):
    r = await client.post(
        "/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "11"}, content=b"hello world"
    )
    assert r.status_code == 201
    assert r.headers["upload-offset"] == "11"
    upload_id = r.headers["location"].rsplit("/", 1)[1]
    assert (upload_dir / upload_id).read_bytes() == b"hello world"


async def test_p38_creation_with_partial_upload(client):
    r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "11"}, content=b"hello")
    assert r.status_code == 201 and r.headers["upload-offset"] == "5"
    r = await patch(client, r.headers["location"], 5, b" world")
    assert r.headers["upload-offset"] == "11"


async def test_creation_body_without_offset_content_type_is_ignored(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3", "Content-Type": "text/plain"}, content=b"abc")
    assert r.status_code == 201 and "upload-offset" not in r.headers


# -- termination ----------------------------------------------------------------------------------------------------


async def test_p56_p57_termination(client, upload_dir):
    url = await create(client, 5)
    await patch(client, url, 0, b"abc")
    r = await client.delete(url, headers=TUS)
    assert r.status_code == 204
    assert (await client.head(url)).status_code == 404
    assert os.listdir(upload_dir) == []
    assert (await client.delete(url, headers=TUS)).status_code == 404


async def test_termination_disabled(client_factory):
    client = client_factory(disable_termination=True)
    assert "termination" not in (await client.options("/files/")).headers["tus-extension"]
    url = await create(client)
    r = await client.delete(url, headers=TUS)
    assert r.status_code == 405 and "DELETE" not in r.headers["allow"]


# -- download -------------------------------------------------------------------------------------------------------


async def test_download_with_type_and_name(client):
    meta = "filename " + base64.b64encode(b"report.html").decode() + ",filetype " + base64.b64encode(b"text/html").decode()
    url = await create(client, 5, **{"Upload-Metadata": meta})
    await patch(client, url, 0, b"<b>x</b>"[:5])
    r = await client.get(url)
    assert r.status_code == 200 and r.content == b"<b>x<"
    assert r.headers["content-type"] == "text/html"
    assert r.headers["content-disposition"] == 'attachment; filename="report.html"'


async def test_download_ranges_and_conditionals(client):
    url = await create(client, 10)
    await patch(client, url, 0, b"0123456789")
    r = await client.get(url, headers={"Range": "bytes=2-5"})
    assert r.status_code == 206 and r.content == b"2345" and r.headers["content-range"] == "bytes 2-5/10"
    r = await client.get(url, headers={"Range": "bytes=-3"})
    assert r.content == b"789"
    r = await client.get(url, headers={"Range": "bytes=20-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */10"
    etag = (await client.get(url)).headers["etag"]
    r = await client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = await client.get(url, headers={"If-Match": '"stale"'})
    assert r.status_code == 412
    r = await client.get(url, headers={"Range": "bytes=0-0", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == b"0123456789"


async def test_download_of_unfinished_upload_serves_what_is_stored(client):
    url = await create(client, 10)
    await patch(client, url, 0, b"0123")
    r = await client.get(url)
    assert r.status_code == 200 and r.content == b"0123"


async def test_download_disabled(client_factory):
    client = client_factory(disable_download=True)
    url = await create(client, 1)
    r = await client.get(url)
    assert r.status_code == 405 and "GET" not in r.headers["allow"]


# -- routing, CORS, URLs --------------------------------------------------------------------------------------------


async def test_methods_not_allowed(client):
    r = await client.get("/files/")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    url = await create(client)
    r = await client.put(url, headers=TUS)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, PATCH, DELETE"


async def test_base_path_without_trailing_slash(client):
    r = await client.post("/files", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 201


async def test_paths_outside_base_are_404(client):
    assert (await client.get("/other")).status_code == 404


async def test_greeting(client_factory):
    client = client_factory(show_greeting=True)
    r = await client.get("/")
    assert r.status_code == 200 and "tus" in r.text and "http://tus.test/files/" in r.text


async def test_cors_preflight_and_actual(client):
    r = await client.options("/files/", headers={"Origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert r.headers["vary"] == "Origin"
    assert "PATCH" in r.headers["access-control-allow-methods"]
    assert "Upload-Offset" in r.headers["access-control-allow-headers"]
    assert r.headers["access-control-max-age"] == "86400"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Origin": "https://app.example"})
    assert "Location" in r.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in r.headers


async def test_cors_origin_not_allowed(client_factory):
    from pytusd import CorsConfig

    client = client_factory(cors=CorsConfig(allow_origin=r"^https://good\.example$", allow_credentials=True,
                                            allow_headers="X-Custom"))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Origin": "https://evil.example"})
    assert r.status_code == 403 and r.text.startswith("ERR_ORIGIN_NOT_ALLOWED")
    r = await client.options("/files/", headers={"Origin": "https://good.example"})
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-headers"].endswith(", X-Custom")


async def test_cors_disabled(client_factory):
    from pytusd import CorsConfig

    client = client_factory(cors=CorsConfig(disable=True))
    r = await client.options("/files/", headers={"Origin": "https://x.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_behind_proxy_location(client_factory):
    client = client_factory(behind_proxy=True)
    r = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "X-Forwarded-Host": "up.example", "X-Forwarded-Proto": "https"}
    )
    assert r.headers["location"].startswith("https://up.example/files/")
    plain = client_factory()
    r = await plain.post("/files/", headers={**TUS, "Upload-Length": "1", "X-Forwarded-Host": "up.example"})
    assert r.headers["location"].startswith("http://tus.test/files/")


async def test_absolute_base_path(client_factory):
    client = client_factory(base_path="https://cdn.example/files/")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.headers["location"].startswith("https://cdn.example/files/")


# -- path traversal -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/files/..",
        "/files/../secret",
        "/files/a/../../secret",
        "/files/../../etc/passwd",
        "/files//etc/passwd",
        "/files/" + "/tmp/secret",
        "/files/x\x00y",
        "/files/" + "a" * 600,
        "/files/..\\secret",
        "/files/.",
        "/files/./secret",
        "/files/%2e%2e/secret",  # a literal percent sign after decoding: a valid-looking but unknown ID
    ],
)
async def test_ids_from_urls_never_escape_the_upload_dir(tmp_path, path):
    app = make_app(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not touch")
    (tmp_path / "secret.info").write_text(json.dumps({"ID": "secret", "Size": 100}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for method, headers, body in (
        ("HEAD", {}, b""),
        ("GET", {}, b""),
        ("PATCH", {**TUS, **PATCH_TYPE, "Upload-Offset": "12"}, b"overwrite!"),
        ("DELETE", TUS, b""),
    ):
        status, _, content = await raw_request(app, method, path, headers, body)
        assert status in (404, 405), (method, path, status)
        assert b"do not touch" not in content
    assert secret.read_bytes() == b"do not touch"
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before] in ([], ["data"])


async def test_percent_encoded_dot_segments_reach_the_app_decoded_and_are_refused(client, tmp_path):
    # httpx keeps %2e%2e as is; the ASGI server decodes it to "..", which the app refuses.
    r = await client.get("/files/%2e%2e/secret")
    assert r.status_code == 404


# -- mounting -------------------------------------------------------------------------------------------------------


async def test_mounted_under_a_starlette_sub_path(tmp_path):
    tus = TusApp(Config(store=FileStore(tmp_path / "up")))
    outer = Starlette(routes=[Mount("/api/uploads", app=tus)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://site.test") as c:
        r = await c.post("/api/uploads/files/", headers={**TUS, "Upload-Length": "5"})
        assert r.status_code == 201
        url = r.headers["location"]
        assert url.startswith("http://site.test/api/uploads/files/")
        r = await c.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=b"12345")
        assert r.status_code == 204
        assert (await c.get(url)).content == b"12345"


async def test_mounted_in_fastapi(tmp_path):
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    api.mount("/uploads", TusApp(Config(store=FileStore(tmp_path / "up"))))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://site.test") as c:
        assert (await c.get("/hello")).json() == {"hello": "world"}
        r = await c.post("/uploads/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "3"}, content=b"abc")
        assert r.status_code == 201 and r.headers["upload-offset"] == "3"
        assert r.headers["location"].startswith("http://site.test/uploads/files/")
        assert (await c.get(r.headers["location"])).content == b"abc"


# -- tusd compatibility of the data folder --------------------------------------------------------------------------


async def test_reads_an_upload_folder_written_by_tusd(client, upload_dir):
    upload_dir.mkdir(parents=True, exist_ok=True)
    upload_id = "8f1b2c3d4e5f60718293a4b5c6d7e8f9"
    (upload_dir / upload_id).write_bytes(b"hello")
    # As tusd's filestore writes it: Offset stale at 0, PartialUploads null.
    (upload_dir / f"{upload_id}.info").write_text(
        json.dumps(
            {
                "ID": upload_id,
                "Size": 10,
                "SizeIsDeferred": False,
                "Offset": 0,
                "MetaData": {"filename": "x.bin"},
                "IsPartial": False,
                "IsFinal": False,
                "PartialUploads": None,
                "Storage": {"Type": "filestore", "Path": str(upload_dir / upload_id),
                            "InfoPath": str(upload_dir / f"{upload_id}.info")},
            }
        )
    )
    r = await client.head(f"/files/{upload_id}")
    assert r.headers["upload-offset"] == "5" and r.headers["upload-length"] == "10"
    r = await patch(client, f"/files/{upload_id}", 5, b"world")
    assert r.headers["upload-offset"] == "10"
    assert (upload_dir / upload_id).read_bytes() == b"helloworld"


async def test_unreadable_info_is_a_clean_500(client, upload_dir):
    upload_dir.mkdir(parents=True, exist_ok=True)
    (upload_dir / "broken").write_bytes(b"")
    (upload_dir / "broken.info").write_text("{not json")
    r = await client.head("/files/broken")
    assert r.status_code == 500
    r = await client.get("/files/broken")
    assert r.status_code == 500 and r.text.startswith("ERR_INTERNAL_SERVER_ERROR")
