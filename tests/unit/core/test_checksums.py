"""Checksum extension (tus 1.0, section Checksum) through TusApp: the algorithms advertised, a chunk kept only when its
digest matches, and what a crash leaves unverified."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import PATCH_TYPE, TUS, create, patch


# -- checksum -------------------------------------------------------------------------------------------------------


def _digest(algorithm: str, data: bytes) -> str:
    import hashlib
    import zlib

    raw = zlib.crc32(data).to_bytes(4, "big") if algorithm == "crc32" else hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(raw).decode()}"


async def test_checksum_advertised(client):
    r = await client.options("/files/")
    assert "checksum" in r.headers["tus-extension"].split(",")
    assert r.headers["tus-checksum-algorithm"] == "sha1,md5,sha256,sha512,crc32"


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_matching_checksum_is_stored(client, upload_dir, algorithm):
    url = await create(client, 11)
    r = await patch(client, url, 0, b"hello ", **{"Upload-Checksum": _digest(algorithm, b"hello ")})
    assert r.status_code == 204 and r.headers["upload-offset"] == "6"
    r = await patch(client, url, 6, b"world", **{"Upload-Checksum": _digest(algorithm, b"world")})
    assert r.status_code == 204 and r.headers["upload-offset"] == "11"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello world"
    assert not list(upload_dir.glob("*.pending"))


async def test_mismatch_is_460_and_the_chunk_is_discarded(client, upload_dir):
    url = await create(client, 11)
    await patch(client, url, 0, b"hello ")
    r = await patch(client, url, 6, b"world", **{"Upload-Checksum": _digest("sha1", b"WORLD")})
    assert r.status_code == 460 and r.text.startswith("ERR_CHECKSUM_MISMATCH")
    assert (await client.head(url)).headers["upload-offset"] == "6"
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b"hello "
    assert not list(upload_dir.glob("*.pending"))


@pytest.mark.parametrize("header", ["sha3 AAAA", "SHA1 AAAA", "md4 AAAA"])
async def test_unsupported_algorithm_is_400(client, upload_dir, header):
    url = await create(client, 5)
    r = await patch(client, url, 0, b"hello", **{"Upload-Checksum": header})
    assert r.status_code == 400 and r.text.startswith("ERR_UNSUPPORTED_CHECKSUM_ALGORITHM")
    assert (upload_dir / url.rsplit("/", 1)[1]).read_bytes() == b""


@pytest.mark.parametrize("header", ["sha1", "sha1 ", "sha1 !!!", "sha1 AAA"])
async def test_malformed_checksum_is_400(client, header):
    url = await create(client, 5)
    r = await patch(client, url, 0, b"hello", **{"Upload-Checksum": header})
    assert r.status_code == 400


async def test_checksum_on_creation_with_upload(client, upload_dir):
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


async def test_chunk_that_ends_early_is_not_kept(client, upload_dir):
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


# -- checksum-trailer: a fact of the request's server -----------------------------------------------------------------


async def _options(app, extensions: dict) -> dict[str, str]:
    """OPTIONS straight through the ASGI interface, with the scope extensions a server would set."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "OPTIONS", "scheme": "http",
             "path": "/files/", "raw_path": b"/files/", "root_path": "", "query_string": b"", "client": None,
             "server": None, "headers": [(b"host", b"example.org")], "extensions": extensions}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return {k.decode(): v.decode() for k, v in sent[0]["headers"]}


async def test_checksum_trailer_is_advertised_where_the_server_passes_trailers(tmp_path):
    from pytusd import Config, FileStore, TusApp
    from pytusd.core.http import TRAILERS_EXTENSION

    app = TusApp(Config(store=FileStore(tmp_path)))
    passed = (await _options(app, {TRAILERS_EXTENSION: ()}))["tus-extension"].split(",")
    assert passed[passed.index("checksum") + 1] == "checksum-trailer"
    assert "checksum-trailer" not in (await _options(app, {}))["tus-extension"].split(",")
    # The old switch still forces it, whatever the server.
    forced = TusApp(Config(store=FileStore(tmp_path), request_trailers=True))
    assert "checksum-trailer" in (await _options(forced, {}))["tus-extension"].split(",")
