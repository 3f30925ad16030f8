"""One access rule: pre-access guards every way an existing upload is read or changed.

Every method that touches an upload (HEAD, PATCH, GET, DELETE), in tus 1.0 and at every IETF-draft interop version,
through the mounted app and through the endpoints an application routes itself, meets the same hook; so does the
creation of a final upload, which reads the partials it names (tests/hostile/test_concatenation.py).
"""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from pytusd.hooks import Hooks, PythonHookBackend

from ..conftest import PATCH_TYPE, TUS, make_app

DRAFT_VERSIONS = (3, 4, 5, 6, 7, 8)
METHODS = ("HEAD", "PATCH", "GET", "DELETE")


def owner_hook(calls: list[tuple[str, str]]):
    async def hook(hook_type: str, request: dict) -> dict | None:
        event = request["Event"]
        calls.append((hook_type, event["HTTPRequest"]["Method"]))
        if hook_type != "pre-access":
            return None
        if event["HTTPRequest"]["Header"].get("Authorization") != ["owner"]:
            return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 401}}
        return None

    return hook


def request_headers(method: str, protocol: int | None) -> dict[str, str]:
    if protocol is None:
        headers = dict(TUS)
        if method == "PATCH":
            headers.update({**PATCH_TYPE, "Upload-Offset": "0"})
        return headers
    headers = {"Upload-Draft-Interop-Version": str(protocol), "Upload-Offset": "0"}
    headers.update({"Upload-Incomplete": "?1"} if protocol == 3 else {"Upload-Complete": "?0"})
    if method == "PATCH" and protocol >= 6:
        headers["Content-Type"] = "application/partial-upload"
    return headers


async def exercise(client: httpx.AsyncClient, base: str, protocol: int | None) -> None:
    r = await client.post(base, headers={**TUS, "Upload-Length": "3"})
    assert r.status_code == 201, r.text
    url = r.headers["location"]
    for method in METHODS:
        r = await client.request(method, url, headers=request_headers(method, protocol), content=b"abc"
                                 if method == "PATCH" else None)
        assert r.status_code == 401, (method, protocol, r.status_code, r.text)
    owner = {"Authorization": "owner"}
    for method in METHODS:  # the owner may do everything (so the refusals above were the hook's)
        r = await client.request(method, url, headers={**request_headers(method, protocol), **owner},
                                 content=b"abc" if method == "PATCH" else None)
        assert r.status_code in (200, 204), (method, protocol, r.status_code, r.text)


@pytest.mark.parametrize("protocol", [None, *DRAFT_VERSIONS], ids=lambda v: "tus" if v is None else f"draft-v{v}")
async def test_pre_access_guards_every_method_in_every_protocol(client_factory, protocol):
    calls: list[tuple[str, str]] = []
    client = client_factory(enable_experimental_protocol=True,
                            hooks=Hooks(PythonHookBackend(owner_hook(calls)), ("pre-access",)))
    await exercise(client, "/files/", protocol)
    assert [method for kind, method in calls if kind == "pre-access"] == list(METHODS) * 2


async def test_pre_access_guards_the_endpoints_an_application_routes(tmp_path):
    calls: list[tuple[str, str]] = []
    tus = make_app(tmp_path, hooks=Hooks(PythonHookBackend(owner_hook(calls)), ("pre-access",)), base_path="/up/")
    e = tus.endpoints
    routes = [
        Route("/up/", e.create, methods=["POST"]),
        Route("/up/{upload_id:path}", e.head, methods=["HEAD"]),
        Route("/up/{upload_id:path}", e.patch, methods=["PATCH"]),
        Route("/up/{upload_id:path}", e.get, methods=["GET"]),
        Route("/up/{upload_id:path}", e.delete, methods=["DELETE"]),
    ]
    app = Starlette(routes=routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tus.test") as client:
        await exercise(client, "/up/", None)
    assert [method for kind, method in calls if kind == "pre-access"] == list(METHODS) * 2
