"""TusApp, the ASGI application: routing (methods, the base path, paths outside it), CORS, the greeting, the
Location behind a proxy, URLs that must not escape the upload folder, and mounting under Starlette and FastAPI."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from pytusd import Config, FileStore, TusApp

from tests.conftest import PATCH_TYPE, TUS, create, make_app, raw_request


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
