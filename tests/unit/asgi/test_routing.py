"""Routing it yourself (pytusd.asgi.routing): the tus endpoints as Starlette routes and FastAPI path operations,
each serving only its methods, and the method-override middleware."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.routing import Route

from pytusd import Config, CorsConfig, FileStore, HookResponse, MethodOverrideMiddleware, TusApp, UploadEvent

from tests.conftest import PATCH_TYPE, TUS, patch
from tests.test_library import client_for


# -- routing it yourself ----------------------------------------------------------------------------------------


def starlette_routes(tus: TusApp) -> list[Route]:
    e = tus.endpoints
    return [
        Route("/files/", e.create, methods=["POST"]),
        Route("/files/", e.options, methods=["OPTIONS"]),
        Route("/files/{upload_id:path}", e.head, methods=["HEAD"]),
        Route("/files/{upload_id:path}", e.patch, methods=["PATCH"]),
        Route("/files/{upload_id:path}", e.get, methods=["GET"]),
        Route("/files/{upload_id:path}", e.delete, methods=["DELETE"]),
        Route("/files/{upload_id:path}", e.options, methods=["OPTIONS"]),
    ]


async def test_endpoints_as_starlette_routes(tmp_path):
    async def pre_create(event: UploadEvent) -> HookResponse:
        return HookResponse(change_id=f"nested/{secrets.token_hex(4)}")

    tus = TusApp(Config(store=FileStore(tmp_path), pre_create=pre_create,
                        cors=CorsConfig(allow_origin=r"^https://app\.example$")))
    app = Starlette(routes=starlette_routes(tus), middleware=[Middleware(MethodOverrideMiddleware)])
    async with client_for(app) as client:
        origin = {"Origin": "https://app.example"}
        r = await client.options("/files/", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "Upload-Offset" in r.headers["access-control-allow-headers"] and "tus-extension" in r.headers
        r = await client.post("/files/", headers={**TUS, **origin, "Upload-Length": "5"})
        assert r.status_code == 201 and "Location" in r.headers["access-control-expose-headers"]
        url = r.headers["location"]
        assert url.startswith("http://tus.test/files/nested/")
        r = await client.post(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0",
                                            "X-HTTP-Method-Override": "PATCH"}, content=b"hello")
        assert r.status_code == 204 and r.headers["upload-offset"] == "5"
        assert (await client.head(url)).headers["upload-length"] == "5"
        assert (await client.get(url)).content == b"hello"
        r = await client.options(url, headers={**origin, "Access-Control-Request-Method": "PATCH"})
        assert r.status_code == 200
        r = await client.post("/files/", headers={**TUS, "Origin": "https://evil.example", "Upload-Length": "1"})
        assert r.status_code == 403
        assert (await client.get("/files/nested/nope")).status_code == 404
        assert (await client.delete(url, headers=TUS)).status_code == 204
        assert (await client.head(url)).status_code == 404
    numbers = tus.metrics.snapshot()
    assert numbers.requests["PATCH"] == 1 and numbers.requests["OPTIONS"] == 2 and numbers.uploads_terminated == 1


async def test_an_endpoint_serves_only_its_methods(tmp_path):
    tus = TusApp(Config(store=FileStore(tmp_path)))
    app = Starlette(routes=[Route("/up/{upload_id:path}", tus.endpoints.head, methods=["HEAD", "PATCH"])])
    async with client_for(app) as client:
        r = await client.patch("/up/abc", headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=b"x")
        assert r.status_code == 405 and r.headers["allow"] == "HEAD"
        assert r.text.startswith("ERR_METHOD_NOT_ALLOWED")
    assert repr(tus.endpoints.get) == "<pytusd Endpoint get (GET, HEAD)>"
    assert [e.operation.name for e in tus.endpoints] == ["create", "head", "patch", "get", "delete", "options"]


async def test_endpoints_in_fastapi_path_operations_with_a_dependency(tmp_path):
    tus = TusApp(Config(store=FileStore(tmp_path), base_path="/api/uploads/"))
    api = FastAPI()
    api.add_middleware(MethodOverrideMiddleware)
    background: list[str] = []

    async def user(request: Request) -> str:
        if request.headers.get("authorization") != "Bearer t":
            raise HTTPException(401)
        return "u"

    @api.post("/api/uploads/")
    async def create_upload(who: str = Depends(user)) -> Response:
        return tus.endpoints.create.response()

    @api.patch("/api/uploads/{upload_id}")
    async def patch_upload(upload_id: str, who: str = Depends(user)) -> Response:
        response = tus.endpoints.patch.response()
        response.background = BackgroundTask(background.append, upload_id)
        return response

    @api.head("/api/uploads/{upload_id}")
    async def head_upload(upload_id: str, who: str = Depends(user)) -> Response:
        return tus.endpoints.head.response()

    auth = {"Authorization": "Bearer t"}
    async with client_for(api) as client:
        assert (await client.post("/api/uploads/", headers={**TUS, "Upload-Length": "3"})).status_code == 401
        r = await client.post("/api/uploads/", headers={**TUS, **auth, "Upload-Length": "3"})
        assert r.status_code == 201 and r.headers["location"].startswith("http://tus.test/api/uploads/")
        url = r.headers["location"]
        assert (await patch(client, url, 0, b"abc")).status_code == 401
        r = await patch(client, url, 0, b"abc", **auth)
        assert r.status_code == 204 and r.headers["upload-offset"] == "3"
        assert background == [url.rsplit("/", 1)[1]]
        r = await client.head(url, headers=auth)
        assert r.status_code == 200 and r.headers["upload-offset"] == "3"


def test_method_override_middleware_leaves_other_requests_alone():
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["method"])

    middleware = MethodOverrideMiddleware(app)
    header = [(b"x-http-method-override", b"delete")]

    async def run() -> None:
        await middleware({"type": "http", "method": "POST", "headers": header}, None, None)  # type: ignore[arg-type]
        await middleware({"type": "http", "method": "GET", "headers": header}, None, None)  # type: ignore[arg-type]
        await middleware({"type": "http", "method": "POST", "headers": []}, None, None)  # type: ignore[arg-type]

    asyncio.run(run())
    assert seen == ["DELETE", "GET", "POST"]
