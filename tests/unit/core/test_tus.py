"""tus 1.0 core, creation, creation-defer-length, creation-with-upload and termination through TusApp.

Sections as in the tus 1.0 specification (https://tus.io/protocols/resumable-upload). The app runs in-process (httpx's ASGI transport); the real server and
real clients are in tests/e2e.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from tests.conftest import PATCH_TYPE, TUS, create, patch


# -- core -----------------------------------------------------------------------------------------------------------


async def test_every_response_carries_tus_resumable(client):
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


async def test_unsupported_version_is_412_and_not_processed(client, upload_dir):
    r = await client.post("/files/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    assert r.status_code == 412
    assert r.text == "ERR_UNSUPPORTED_VERSION: Tus-Resumable must be 1.0.0\n"
    assert r.headers["tus-version"] == "1.0.0"
    r = await client.post("/files/", headers={"Upload-Length": "5"})
    assert r.status_code == 412
    assert not upload_dir.exists() or os.listdir(upload_dir) == []


async def test_get_and_head_need_no_tus_resumable(client):
    url = await create(client, 0)
    assert (await client.head(url)).status_code == 200
    assert (await client.get(url)).status_code == 200


async def test_options(client):
    r = await client.options("/files/")
    assert r.status_code == 200
    assert r.headers["tus-version"] == "1.0.0"
    assert r.headers["tus-extension"] == (
        "creation,creation-with-upload,termination,concatenation,concatenation-unfinished,creation-defer-length,"
        "checksum"
    )
    assert "tus-max-size" not in r.headers


async def test_tus_max_size_when_limited(client_factory):
    client = client_factory(max_size=1000)
    r = await client.options("/files/")
    assert r.headers["tus-max-size"] == "1000"


async def test_tus_resumable_on_options_is_ignored(client):
    r = await client.options("/files/", headers={"Tus-Resumable": "9.9.9"})
    assert r.status_code == 200


async def test_method_override_on_post(client):
    url = await create(client)
    r = await client.post(
        url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}, content=b"hi"
    )
    assert r.status_code == 204 and r.headers["upload-offset"] == "2"
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 204
    assert (await client.head(url)).status_code == 404


# -- HEAD -----------------------------------------------------------------------------------------------------------


async def test_head(client):
    url = await create(client, 11)
    r = await client.head(url)
    assert r.status_code == 200
    assert r.headers["upload-offset"] == "0"
    assert r.headers["upload-length"] == "11"
    assert r.headers["cache-control"] == "no-store"
    await patch(client, url, 0, b"hello world")
    r = await client.head(url)
    assert r.headers["upload-offset"] == "11"


async def test_head_unknown_is_404_without_offset_or_body(client):
    r = await client.head("/files/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404
    assert "upload-offset" not in r.headers
    assert r.content == b""


# -- PATCH ----------------------------------------------------------------------------------------------------------


async def test_patch_appends_and_reports_offset(client, upload_dir):
    url = await create(client, 11)
    r = await patch(client, url, 0, b"hello ")
    assert r.status_code == 204 and r.headers["upload-offset"] == "6"
    r = await patch(client, url, 6, b"world")
    assert r.status_code == 204 and r.headers["upload-offset"] == "11"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello world"


async def test_wrong_content_type_is_400(client):
    url = await create(client)
    r = await client.patch(url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_CONTENT_TYPE")


async def test_offset_mismatch_409_resource_unchanged(client, upload_dir):
    url = await create(client, 11)
    await patch(client, url, 0, b"hello")
    r = await patch(client, url, 3, b"XXXX")
    assert r.status_code == 409 and r.text.startswith("ERR_MISMATCHED_OFFSET")
    r = await patch(client, url, 9, b"XX")
    assert r.status_code == 409
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello"


@pytest.mark.parametrize("offset", ["-1", "abc", "", "1.0"])
async def test_invalid_offset_is_400(client, offset):
    url = await create(client)
    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": offset}, content=b"x")
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_OFFSET")


async def test_patch_unknown_is_404(client):
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


async def test_chunked_body_over_the_length_keeps_the_allowed_part(client, upload_dir):
    url = await create(client, 4)

    async def body():
        yield b"ab"
        yield b"cdef"

    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=body())
    assert r.status_code == 413
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"abcd"
    assert (await client.head(url)).headers["upload-offset"] == "4"


# -- creation -------------------------------------------------------------------------------------------------------


async def test_creation_201_with_absolute_location(client, upload_dir):
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


async def test_creation_without_length_is_400(client):
    r = await client.post("/files/", headers=TUS)
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_UPLOAD_LENGTH")


async def test_zero_length_upload_is_complete_at_once(client):
    url = await create(client, 0)
    r = await client.head(url)
    assert r.headers["upload-offset"] == "0" and r.headers["upload-length"] == "0"


async def test_length_over_max_is_413(client_factory):
    client = client_factory(max_size=10)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "11"})
    assert r.status_code == 413 and r.text.startswith("ERR_MAX_SIZE_EXCEEDED")


async def test_metadata_is_stored_and_echoed(client):
    meta = "filename " + base64.b64encode("naïve.txt".encode()).decode() + ",is_confidential"
    url = await create(client, 1, **{"Upload-Metadata": meta})
    r = await client.head(url)
    assert r.headers["upload-metadata"] == meta


async def test_empty_metadata_header_is_accepted(client):
    url = await create(client, 1, **{"Upload-Metadata": ""})
    r = await client.head(url)
    assert "upload-metadata" not in r.headers


async def test_upload_length_beyond_int64_is_400(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "9223372036854775808"})
    assert r.status_code == 400


async def test_repeated_length_header_is_rejected(client):
    r = await client.post("/files/", headers=[("Tus-Resumable", "1.0.0"), ("Upload-Length", "1"), ("Upload-Length", "2")])
    assert r.status_code == 400


# -- creation-defer-length ------------------------------------------------------------------------------------------


async def test_deferred_length_head(client):
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await client.head(url)
    assert r.headers["upload-defer-length"] == "1"
    assert "upload-length" not in r.headers


async def test_length_declared_on_later_patch_once(client, upload_dir):
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


async def test_declared_length_below_offset_is_400(client):
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


async def test_creation_with_upload(client, upload_dir):
    r = await client.post(
        "/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "11"}, content=b"hello world"
    )
    assert r.status_code == 201
    assert r.headers["upload-offset"] == "11"
    upload_id = r.headers["location"].rsplit("/", 1)[1]
    assert (upload_dir / upload_id).read_bytes() == b"hello world"


async def test_creation_with_partial_upload(client):
    r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": "11"}, content=b"hello")
    assert r.status_code == 201 and r.headers["upload-offset"] == "5"
    r = await patch(client, r.headers["location"], 5, b" world")
    assert r.headers["upload-offset"] == "11"


async def test_creation_body_without_offset_content_type_is_ignored(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3", "Content-Type": "text/plain"}, content=b"abc")
    assert r.status_code == 201 and "upload-offset" not in r.headers


# -- termination ----------------------------------------------------------------------------------------------------


async def test_termination(client, upload_dir):
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
