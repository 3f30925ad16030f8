"""Concatenation and concatenation-unfinished (tus 1.0, section Concatenation) through TusApp: partial and final
uploads, the order of the parts, the errors."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import PATCH_TYPE, TUS, create, make_app, patch


# -- concatenation --------------------------------------------------------------------------------------------------


async def _partial(client, data: bytes, **headers: str) -> str:
    url = await create(client, len(data), **{"Upload-Concat": "partial", **headers})
    if data:
        assert (await patch(client, url, 0, data)).status_code == 204
    return url


async def test_partial_upload(client):
    url = await _partial(client, b"abc")
    r = await client.head(url)
    assert r.headers["upload-concat"] == "partial" and r.headers["upload-offset"] == "3"


async def test_final_concatenates_in_order_with_reuse(client, upload_dir):
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


async def test_partial_metadata_does_not_carry_over(client):
    a = await _partial(client, b"x", **{"Upload-Metadata": "filename " + base64.b64encode(b"part").decode()})
    meta = "filename " + base64.b64encode(b"whole.txt").decode()
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}", "Upload-Metadata": meta})
    assert (await client.head(r.headers["location"])).headers["upload-metadata"] == meta


async def test_final_of_unfinished_partials_completes_with_the_last_one(client, upload_dir):
    a = await create(client, 5, **{"Upload-Concat": "partial"})
    b = await create(client, 3, **{"Upload-Concat": "partial"})
    await patch(client, a, 0, b"ab")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert r.status_code == 201
    final = r.headers["location"]
    head = await client.head(final)
    assert "upload-offset" not in head.headers  # tus concatenation: a final has no offset until concatenated
    assert head.headers["upload-length"] == "8"  # the final's length is the sum of its partials', known already
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


async def test_without_concatenation_unfinished_unfinished_partials_are_400(client_factory):
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


async def test_patch_on_final_is_403(client):
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
