"""Fireboom upload hooks against a Fireboom-style hook server: rename, reject, report."""

from __future__ import annotations

from pytusd.hooks import Hooks

from tests.conftest import TUS, patch
from tests.unit.hooks.test_http import HookServer


# -- Fireboom upload hooks against a Fireboom-style hook server ---------------------------------------------------


def fireboom_answer(path: str, body: dict) -> tuple[int, dict]:
    """A Fireboom-style hook server: preUpload rejects names starting with 'bad', renames the others."""
    if path.endswith("/preUpload"):
        name = body["file"]["name"]
        return 200, ({"error": "name not allowed"} if name.startswith("bad") else {"fileKey": f"renamed-{name}"})
    return 200, {}


async def test_fireboom_hooks_rename_reject_and_report(client_factory):
    import base64

    from pytusd.hooks import FireboomHookBackend

    server = HookServer(respond=fireboom_answer)
    try:
        backend = FireboomHookBackend(server.url.rsplit("/", 1)[0], "files", "avatars")
        hooks = Hooks(backend, ("pre-create", "post-finish", "post-terminate"))
        client = client_factory(hooks=hooks)

        def meta(name):
            return {"Upload-Metadata": "filename " + base64.b64encode(name.encode()).decode()}

        r = await client.post("/files/", headers={**TUS, "Upload-Length": "2", "X-Request-ID": "req-1", **meta("a.png")})
        assert r.status_code == 201 and r.headers["location"].endswith("/files/renamed-a.png")
        await patch(client, r.headers["location"], 0, b"ok")
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "2", **meta("bad.exe")})
        assert r.status_code == 400 and r.text == "name not allowed"
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "9", **meta("c.txt")})
        await client.delete(r.headers["location"], headers=TUS)
        await hooks.drain()
        pre = [(h, b) for h, b in server.requests if h["path"] == "/upload/files/avatars/preUpload"]
        post = [(h, b) for h, b in server.requests if h["path"] == "/upload/files/avatars/postUpload"]
        assert len(pre) == 3 and len(post) == 2 and len(server.requests) == 5
        first_headers, first = pre[0]
        assert first_headers["X-Request-Id"] == "req-1"
        assert first["file"] == {"name": "a.png", "size": 2, "type": "", "provider": "files"}
        assert first["__wg"]["clientRequest"]["method"] == "POST" and first["meta"] == {"filename": "a.png"}
        finished = [b for _, b in post if "error" not in b]
        failed = [b for _, b in post if "error" in b]
        assert [b["file"]["name"] for b in finished] == ["renamed-a.png"]
        assert [b["file"]["name"] for b in failed] == ["renamed-c.txt"] and failed[0]["error"]["name"] == "UploadError"
    finally:
        server.close()
