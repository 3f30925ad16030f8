"""IETF "Resumable Uploads for HTTP" draft, interop versions 3-8 (draft-ietf-httpbis-resumable-upload)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TUS


def complete_header(version: int, complete: bool) -> dict[str, str]:
    if version == 3:
        return {"Upload-Incomplete": "?0" if complete else "?1"}
    return {"Upload-Complete": "?1" if complete else "?0"}


def draft_headers(version: int, complete: bool, **extra: str) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(version), **complete_header(version, complete), **extra}


def append_type(version: int) -> dict[str, str]:
    return {"Content-Type": "application/partial-upload"} if version >= 6 else {}


@pytest.fixture
def draft_client(client_factory):
    return client_factory(enable_experimental_protocol=True, max_size=1000)


async def test_draft_needs_the_flag(client):
    r = await client.post("/files/", headers=draft_headers(8, True), content=b"abc")
    assert r.status_code == 412  # plain tus: no Tus-Resumable


async def test_unknown_interop_version_is_tus_v1(draft_client):
    r = await draft_client.post("/files/", headers={"Upload-Draft-Interop-Version": "2"}, content=b"x")
    assert r.status_code == 412


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8])
async def test_draft_upload_in_one_request(draft_client, upload_dir, version):
    r = await draft_client.post("/files/", headers=draft_headers(version, True), content=b"hello draft")
    assert r.status_code == 201, r.text
    assert "tus-resumable" not in r.headers
    assert r.headers["upload-draft-interop-version"] == str(version)
    assert r.headers["upload-limit"] == "min-size=0,max-size=1000"
    done = "upload-incomplete" if version == 3 else "upload-complete"
    assert r.headers[done] == ("?0" if version == 3 else "?1")
    upload_id = r.headers["location"].rsplit("/", 1)[1]
    assert (upload_dir / upload_id).read_bytes() == b"hello draft"


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8])
async def test_draft_resumed_upload(draft_client, upload_dir, version):
    r = await draft_client.post("/files/", headers=draft_headers(version, False), content=b"hello ")
    assert r.status_code == 201
    url = r.headers["location"]
    head = await draft_client.head(url, headers={"Upload-Draft-Interop-Version": str(version)})
    assert head.status_code == 204
    assert head.headers["upload-offset"] == "6"
    assert head.headers["cache-control"] == "no-store"
    assert "upload-length" not in head.headers  # not known yet
    r = await draft_client.patch(
        url, headers={**draft_headers(version, True, **{"Upload-Offset": "6"}), **append_type(version)}, content=b"world"
    )
    assert r.status_code == 204, r.text
    head = await draft_client.head(url, headers={"Upload-Draft-Interop-Version": str(version)})
    assert head.headers["upload-length"] == "11"
    assert head.headers["upload-incomplete" if version == 3 else "upload-complete"] == ("?0" if version == 3 else "?1")
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello world"


async def test_v6_append_needs_partial_upload_type(draft_client):
    r = await draft_client.post("/files/", headers=draft_headers(6, False), content=b"a")
    r = await draft_client.patch(
        r.headers["location"], headers=draft_headers(6, True, **{"Upload-Offset": "1"}), content=b"b"
    )
    assert r.status_code == 400 and r.text.startswith("ERR_INVALID_CONTENT_TYPE")


async def test_v7_offset_mismatch_is_a_problem_document(draft_client):
    url = (await draft_client.post("/files/", headers=draft_headers(7, False), content=b"abc")).headers["location"]
    r = await draft_client.patch(
        url, headers={**draft_headers(7, True, **{"Upload-Offset": "1"}), **append_type(7)}, content=b"x"
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    problem = json.loads(r.text)
    assert problem["type"].endswith("#mismatching-upload-offset")
    assert problem["expected-offset"] == 3 and problem["provided-offset"] == 1


async def test_v5_offset_mismatch_is_plain_409(draft_client):
    url = (await draft_client.post("/files/", headers=draft_headers(5, False), content=b"abc")).headers["location"]
    r = await draft_client.patch(url, headers=draft_headers(5, True, **{"Upload-Offset": "0"}), content=b"x")
    assert r.status_code == 409 and r.headers["upload-offset"] == "3"


async def test_length_and_complete_request_must_agree(draft_client):
    r = await draft_client.post(
        "/files/", headers=draft_headers(8, True, **{"Upload-Length": "5"}), content=b"abc"
    )
    assert r.status_code == 400


async def test_v8_data_past_the_length_is_inconsistent(draft_client):
    r = await draft_client.post("/files/", headers=draft_headers(8, False, **{"Upload-Length": "4"}), content=b"ab")
    url = r.headers["location"]
    r = await draft_client.patch(
        url, headers={**draft_headers(8, False, **{"Upload-Offset": "2"}), **append_type(8)}, content=b"cdef"
    )
    assert r.status_code == 413
    assert json.loads(r.text)["type"].endswith("#inconsistent-upload-length")


async def test_draft_options_and_delete(draft_client):
    r = await draft_client.options("/files/", headers={"Upload-Draft-Interop-Version": "8"})
    assert r.status_code == 200 and r.headers["upload-limit"] == "min-size=0,max-size=1000"
    url = (await draft_client.post("/files/", headers=draft_headers(8, False), content=b"x")).headers["location"]
    assert (await draft_client.delete(url, headers={"Upload-Draft-Interop-Version": "8"})).status_code == 204
    assert (await draft_client.head(url, headers=TUS)).status_code == 404


async def test_draft_name_and_type_from_content_headers(draft_client):
    r = await draft_client.post(
        "/files/",
        headers={**draft_headers(8, True), "Content-Type": "image/png", "Content-Disposition": 'attachment; filename="p.png"'},
        content=b"\x89PNG",
    )
    got = await draft_client.get(r.headers["location"])
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"] == 'inline; filename="p.png"'
