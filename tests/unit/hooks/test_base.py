"""The hook dispatcher (pytusd.hooks.base): tusd's events and JSON, blocking hooks that reject or change an upload,
post-receive and StopUpload, pre-access, several backends side by side, and every event on every backend. Each
backend's own behaviour is in the test module named after it."""

from __future__ import annotations

import os

import pytest

from pytusd.hooks import FileHookBackend, HookResponse, Hooks, PythonHookBackend

from tests.conftest import TUS, create, patch
from tests.unit.hooks.test_file import script
from tests.unit.hooks.test_http import HookServer


ALL = ("pre-create", "post-create", "pre-finish", "post-finish", "pre-terminate", "post-terminate")


def recorder(answers: dict[str, dict] | None = None):
    calls: list[tuple[str, dict]] = []

    async def hook(hook_type: str, request: dict):
        calls.append((hook_type, request))
        return (answers or {}).get(hook_type)

    return calls, Hooks(PythonHookBackend(hook), ALL)


async def test_events_in_order_with_tusd_json(client_factory):
    calls, hooks = recorder()
    client = client_factory(hooks=hooks)
    url = await create(client, 3, **{"Upload-Metadata": "filename YS50eHQ="})
    await patch(client, url, 0, b"abc")
    await client.delete(url, headers=TUS)
    await hooks.drain()
    kinds = [t for t, _ in calls]
    assert sorted(kinds) == sorted(ALL)
    # Blocking hooks run inside their requests, in order; notifications run in the background, in any order.
    assert [t for t in kinds if t.startswith("pre-")] == ["pre-create", "pre-finish", "pre-terminate"]
    pre_create = calls[0][1]
    assert pre_create["Type"] == "pre-create"
    upload = pre_create["Event"]["Upload"]
    assert upload["ID"] == "" and upload["Size"] == 3 and upload["MetaData"] == {"filename": "a.txt"}
    assert set(upload) == {"ID", "Size", "SizeIsDeferred", "Offset", "MetaData", "IsPartial", "IsFinal",
                           "PartialUploads", "Storage"}
    http = pre_create["Event"]["HTTPRequest"]
    assert http["Method"] == "POST" and http["URI"] == "/files/"
    assert http["Header"]["Upload-Length"] == ["3"]
    finish = dict(calls)["post-finish"]["Event"]["Upload"]
    assert finish["Offset"] == 3 and finish["ID"] == url.rsplit("/", 1)[1]


async def test_pre_create_rejects_with_its_response(client_factory, upload_dir):
    _, hooks = recorder({"pre-create": {"RejectUpload": True, "HTTPResponse": {"StatusCode": 403, "Body": "no",
                                                                               "Header": {"X-Why": "quota"}}}})
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 403 and r.text == "no" and r.headers["x-why"] == "quota"
    assert not upload_dir.exists() or os.listdir(upload_dir) == []


async def test_pre_create_reject_without_response_is_400(client_factory):
    _, hooks = recorder({"pre-create": {"rejectupload": True}})  # field names are case-insensitive
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 400 and r.text.startswith("ERR_UPLOAD_REJECTED")


async def test_pre_create_changes_id_metadata_and_storage(client_factory, upload_dir, tmp_path):
    target = tmp_path / "elsewhere.bin"
    _, hooks = recorder({"pre-create": {"ChangeFileInfo": {"ID": "user-7/doc", "MetaData": {"k": "v"},
                                                           "Storage": {"Path": str(target)}},
                                        "HTTPResponse": {"Header": {"X-Extra": "1"}}}})
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "2"})
    assert r.status_code == 201 and r.headers["location"].endswith("/files/user-7/doc")
    assert r.headers["x-extra"] == "1"
    await patch(client, r.headers["location"], 0, b"hi")
    assert target.read_bytes() == b"hi"
    assert (await client.head(r.headers["location"])).headers["upload-metadata"] == "k dg=="


async def test_pre_create_invalid_id_is_refused(client_factory):
    _, hooks = recorder({"pre-create": {"ChangeFileInfo": {"ID": "../escape"}}})
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500


async def test_pre_finish_response_reaches_the_client(client_factory, upload_dir):
    """Seed 002: a pre-finish hook that answers RejectUpload with a 403 makes the client receive that 403."""
    _, hooks = recorder({"pre-finish": {"RejectUpload": True, "HTTPResponse": {"StatusCode": 403,
                                                                                "Body": "virus found"}}})
    client = client_factory(hooks=hooks)
    url = await create(client, 3)
    r = await patch(client, url, 0, b"abc")
    assert r.status_code == 403 and r.text == "virus found"


async def test_pre_terminate_can_keep_the_upload(client_factory):
    _, hooks = recorder({"pre-terminate": {"RejectTermination": True}})
    client = client_factory(hooks=hooks)
    url = await create(client, 3)
    r = await client.delete(url, headers=TUS)
    assert r.status_code == 400 and r.text.startswith("ERR_UPLOAD_TERMINATION_REJECTED")
    assert (await client.head(url)).status_code == 200


async def test_failing_blocking_hook_is_500_and_failing_notification_is_not(client_factory):
    async def hook(hook_type, request):
        raise RuntimeError("boom")

    hooks = Hooks(PythonHookBackend(hook), ("pre-create",))
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and hooks.failures["pre-create"] == 1
    hooks = Hooks(PythonHookBackend(hook), ("post-create",))
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    await hooks.drain()
    assert r.status_code == 201 and hooks.failures["post-create"] == 1


def test_hook_response_parsing():
    answer = HookResponse.from_json({"httpresponse": {"statuscode": 201, "body": "x", "header": {"A": "b"}},
                                     "STOPUPLOAD": True})
    assert answer.status_code == 201 and answer.body == "x" and answer.headers == {"A": "b"} and answer.stop_upload
    for bad in ([1], {"HTTPResponse": {"StatusCode": 99}}, {"HTTPResponse": {"Header": {"A": "b\r\nC: d"}}}):
        with pytest.raises(ValueError):
            HookResponse.from_json(bad)
    with pytest.raises(ValueError):
        Hooks(PythonHookBackend(lambda t, r: None), ("pre-everything",))


async def test_post_receive_reports_progress_and_can_stop_the_upload(client_factory, upload_dir):
    import asyncio

    seen: list[int] = []

    async def hook(hook_type, request):
        offset = request["Event"]["Upload"]["Offset"]
        seen.append(offset)
        if offset >= 4:
            return {"StopUpload": True, "HTTPResponse": {"Body": "stopped: too big"}}
        return None

    hooks = Hooks(PythonHookBackend(hook), ("post-receive",), progress_interval=0.02)
    client = client_factory(hooks=hooks)
    url = await create(client, 100)

    async def slow_body():
        for _ in range(50):
            yield b"ab"
            await asyncio.sleep(0.01)

    r = await client.patch(url, headers={**TUS, "Content-Type": "application/offset+octet-stream",
                                         "Upload-Offset": "0"}, content=slow_body())
    assert r.status_code == 400 and r.text == "stopped: too big"
    assert seen and seen == sorted(seen) and seen[-1] >= 4
    assert (await client.head(url)).status_code == 404  # stopped uploads are terminated
    assert os.listdir(upload_dir) == []


async def test_post_receive_after_a_patch(client_factory):
    calls, _ = recorder()

    async def record(hook_type, request):
        calls.append((hook_type, request))

    hooks = Hooks(PythonHookBackend(record), ("post-receive",))
    client = client_factory(hooks=hooks)
    url = await create(client, 10)
    await patch(client, url, 0, b"abc")
    await hooks.drain()
    assert [(t, r["Event"]["Upload"]["Offset"]) for t, r in calls] == [("post-receive", 3)]


async def test_pre_access_guards_existing_uploads(client_factory):
    async def hook(hook_type, request):
        if hook_type != "pre-access":
            return None
        headers = request["Event"]["HTTPRequest"]["Header"]
        if headers.get("Authorization") != ["Bearer owner"]:
            return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 401, "Header": {"WWW-Authenticate": "Bearer"}}}
        return None

    hooks = Hooks(PythonHookBackend(hook), ("pre-access",))
    client = client_factory(hooks=hooks)
    url = await create(client, 3)  # creation is pre-create's business, not pre-access's
    owner = {"Authorization": "Bearer owner"}
    assert (await client.head(url, headers=owner)).status_code == 200
    assert (await patch(client, url, 0, b"abc", **owner)).status_code == 204
    assert (await client.get(url, headers=owner)).content == b"abc"
    for method in ("HEAD", "GET", "PATCH", "DELETE"):
        r = await client.request(method, url, headers={**TUS, "Content-Type": "application/offset+octet-stream",
                                                       "Upload-Offset": "3"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", method
    r = await client.get(url, headers={"Authorization": "Bearer owner"})
    assert r.status_code == 200 and r.content == b"abc"


async def test_pre_access_is_off_by_default(client_factory):
    calls, _ = recorder()
    from pytusd.hooks import DEFAULT_ENABLED_HOOKS

    assert "pre-access" not in DEFAULT_ENABLED_HOOKS
    hooks = Hooks(PythonHookBackend(lambda t, r: calls.append(t)))
    client = client_factory(hooks=hooks)
    url = await create(client, 1)
    await client.head(url)
    await hooks.drain()
    assert "pre-access" not in calls


async def test_several_backends_each_for_its_events(client_factory, tmp_path):
    first_calls, second_calls = [], []

    async def first(hook_type, request):
        first_calls.append(hook_type)
        return {"ChangeFileInfo": {"MetaData": {"from": "first"}}, "HTTPResponse": {"Header": {"X-First": "1"}}}

    async def second(hook_type, request):
        second_calls.append(hook_type)
        return {"RejectUpload": hook_type == "pre-create" and request["Event"]["Upload"]["Size"] > 5}

    hooks = Hooks(bindings=[(PythonHookBackend(first), ["pre-create"]),
                            (PythonHookBackend(second), ["pre-create", "post-finish"])])
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 201 and r.headers["x-first"] == "1"
    assert (await client.head(r.headers["location"])).headers["upload-metadata"] == "from Zmlyc3Q="
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "9"})
    assert r.status_code == 400  # the second backend rejects; the first one's answer does not undo that
    await patch(client, (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).headers["location"],
                0, b"x")
    await hooks.drain()
    assert first_calls == ["pre-create"] * 3 and second_calls == ["pre-create"] * 3 + ["post-finish"]


@pytest.mark.parametrize("kind", ["python", "file", "http", "grpc"])
async def test_every_event_on_every_backend(client_factory, tmp_path, kind):
    from pytusd.hooks import HOOK_TYPES, HttpHookBackend

    seen: list[str] = []
    cleanup = []
    if kind == "python":
        backend = PythonHookBackend(lambda hook_type, request: seen.append(request["Type"]))
    elif kind == "file":
        hooks_dir = tmp_path / "hooks"
        hooks_dir.mkdir()
        log = tmp_path / "events.log"
        for event in HOOK_TYPES:
            script(hooks_dir, event, f"#!/bin/sh\ncat > /dev/null\necho {event} >> {log}\n")
        backend = FileHookBackend(hooks_dir)
    elif kind == "http":
        server = HookServer()
        cleanup.append(server.close)
        backend = HttpHookBackend(server.url, backoff=0.01)
    else:
        from grpc import aio

        from pytusd.hooks.grpc import GrpcHookBackend
        from pytusd.hooks.proto import hook_pb2, hook_pb2_grpc

        class Recorder(hook_pb2_grpc.HookHandlerServicer):
            async def InvokeHook(self, request, context):
                seen.append(request.type)
                return hook_pb2.HookResponse()

        grpc_server = aio.server()
        hook_pb2_grpc.add_HookHandlerServicer_to_server(Recorder(), grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        backend = GrpcHookBackend(f"127.0.0.1:{port}", backoff=0.01)
    try:
        hooks = Hooks(backend, HOOK_TYPES)
        client = client_factory(hooks=hooks)
        url = await create(client, 4)
        assert (await client.head(url)).status_code == 200
        assert (await patch(client, url, 0, b"data")).status_code == 204
        assert (await client.delete(url, headers=TUS)).status_code == 204
        await hooks.drain()
        if kind == "file":
            seen = log.read_text().split()
        elif kind == "http":
            seen = [body["Type"] for _, body in server.requests]
        assert sorted(set(seen)) == sorted(HOOK_TYPES)
        assert hooks.failures == dict.fromkeys(HOOK_TYPES, 0)
    finally:
        for close in cleanup:
            close()
        if kind == "grpc":
            await grpc_server.stop(None)
