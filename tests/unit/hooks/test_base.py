"""Hooks: tusd's events and JSON with Python and file backends (post-receive/StopUpload, HTTP, gRPC: not yet)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from pytusd.hooks import FileHookBackend, HookResponse, Hooks, PythonHookBackend

from tests.conftest import TUS, create, patch, start_grpc_hook_server

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


def script(directory, name: str, body: str) -> None:
    path = directory / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def test_file_hooks(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    out = tmp_path / "post-finish.json"
    script(hooks_dir, "pre-create", "#!/bin/sh\n"
           "cat > /dev/null\n"
           'echo \'{"ChangeFileInfo": {"MetaData": {"checked": "yes"}}}\'\n')
    script(hooks_dir, "post-finish", f"#!/bin/sh\necho \"$TUS_ID $TUS_SIZE $TUS_OFFSET $PWD\" > {out}.env\n"
           f"cat > {out}\n")
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create", "post-finish", "post-create"))  # no post-create script
    client = client_factory(hooks=hooks)
    url = await create(client, 2)
    await patch(client, url, 0, b"ok")
    await hooks.drain()
    upload_id = url.rsplit("/", 1)[1]
    assert json.loads(out.read_text())["Event"]["Upload"]["MetaData"] == {"checked": "yes"}
    assert out.with_suffix(".json.env").read_text().split() == [upload_id, "2", "2", str(hooks_dir)]


async def test_file_hook_failures(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create",))
    client = client_factory(hooks=hooks)
    script(hooks_dir, "pre-create", "#!/bin/sh\necho oops >&2\nexit 3\n")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and "pre-create hook failed" in r.text
    script(hooks_dir, "pre-create", "#!/bin/sh\necho 'not json'\n")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and hooks.failures["pre-create"] == 2


async def test_file_hook_arguments_never_reach_a_shell(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    marker = tmp_path / "pwned"
    script(hooks_dir, "pre-create", "#!/bin/sh\ncat > /dev/null\n")
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create",))
    evil = "$(touch " + str(marker) + ")"
    import base64

    meta = "name " + base64.b64encode(evil.encode()).decode()
    r = await client_factory(hooks=hooks).post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": meta}
    )
    assert r.status_code == 201 and not marker.exists()


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


# -- HTTP hooks against a real HTTP server on 127.0.0.1 ------------------------------------------------------------


class HookServer:
    """A small HTTP hook receiver on 127.0.0.1: records (headers with the path, JSON body) of every POST and answers
    with ``respond(path, body) -> (status, answer)``, by default from a script of answers, one per call."""

    def __init__(self, answers=None, respond=None):
        import http.server
        import threading

        self.requests: list[tuple[dict, dict]] = []
        self.answers = list(answers or [])
        respond = respond or (lambda path, body: self.answers.pop(0) if self.answers else (200, ""))
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers, path=self.path), body))
                status, answer = respond(self.path, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_server():
    servers = []

    def make(answers=None):
        server = HookServer(answers)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


async def test_http_hooks_events_and_rejection(client_factory, hook_server):
    from pytusd.hooks import HttpHookBackend

    server = hook_server([(200, {"rejectUpload": True, "httpResponse": {"statusCode": 409, "body": "duplicate"}})])
    hooks = Hooks(HttpHookBackend(server.url, forward_headers=["Authorization"], backoff=0.01),
                  ("pre-create", "post-create"))
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Authorization": "Bearer t"})
    assert r.status_code == 409 and r.text == "duplicate"
    url = await create(client, 1, Authorization="Bearer t")
    await hooks.drain()
    kinds = [(h.get("Hook-Name"), b["Type"]) for h, b in server.requests]
    assert kinds == [("pre-create", "pre-create"), ("pre-create", "pre-create"), ("post-create", "post-create")]
    assert all(h.get("Authorization") == "Bearer t" for h, _ in server.requests)
    assert "Idempotency-Key" not in server.requests[0][0] and len(server.requests[2][0]["Idempotency-Key"]) == 32
    assert server.requests[2][1]["Event"]["Upload"]["ID"] == url.rsplit("/", 1)[1]


async def test_http_hook_retries_5xx_then_fails_on_4xx(client_factory, hook_server):
    from pytusd.hooks import HttpHookBackend

    server = hook_server([(503, ""), (500, ""), (200, {"ChangeFileInfo": {"MetaData": {"a": "b"}}}), (404, "")])
    hooks = Hooks(HttpHookBackend(server.url, retry=3, backoff=0.01), ("pre-create",))
    client = client_factory(hooks=hooks)
    url = await create(client, 1)
    assert (await client.head(url)).headers["upload-metadata"] == "a Yg=="
    assert len(server.requests) == 3
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and len(server.requests) == 4  # 404 is not retried


async def test_http_hook_limits(client_factory, hook_server):
    from pytusd.hooks import HttpHookBackend

    server = hook_server([(200, {"x": "y" * 100}), (200, "not json")])
    hooks = Hooks(HttpHookBackend(server.url, size_limit=50, backoff=0.01), ("pre-create",))
    client = client_factory(hooks=hooks)
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status_code == 500
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status_code == 500
    hooks = Hooks(HttpHookBackend("http://127.0.0.1:9/unreachable", retry=1, backoff=0.01), ("pre-create",))
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500


async def test_file_hook_timeout_kills_the_script(client_factory, tmp_path):
    import time

    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    script(hooks_dir, "pre-create", "#!/bin/sh\nsleep 30\n")
    hooks = Hooks(FileHookBackend(hooks_dir, timeout=0.3), ("pre-create",))
    started = time.monotonic()
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and time.monotonic() - started < 5


class EventMethods:
    def __init__(self):
        self.seen = []

    async def pre_create(self, request):
        self.seen.append("pre-create")
        return {"ChangeFileInfo": {"ID": "from-methods"}}

    def post_finish(self, request):
        self.seen.append("post-finish")


async def test_python_hook_objects_and_specs(client_factory):
    target = EventMethods()
    hooks = Hooks(PythonHookBackend(target), ("pre-create", "post-create", "post-finish"))
    client = client_factory(hooks=hooks)
    url = await create(client, 0)
    await hooks.drain()
    assert url.endswith("/files/from-methods") and target.seen == ["pre-create", "post-finish"]
    backend = PythonHookBackend.from_spec("tests.unit.hooks.test_base:EventMethods")
    assert backend.hook is EventMethods
    with pytest.raises(ValueError):
        PythonHookBackend.from_spec("no-colon")


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


# -- gRPC hooks against a gRPC server built from the .proto -------------------------------------------------------


async def test_grpc_hooks(client_factory):
    from pytusd.hooks.grpc import GrpcHookBackend
    from pytusd.hooks.proto import hook_pb2, hook_pb2_grpc

    received = []

    class Handler(hook_pb2_grpc.HookHandlerServicer):
        async def InvokeHook(self, request, context):
            received.append(request)
            if request.type == "pre-create":
                if request.event.upload.metaData.get("filename") == "bad":
                    return hook_pb2.HookResponse(
                        rejectUpload=True, httpResponse=hook_pb2.HTTPResponse(statusCode=422, body="no")
                    )
                return hook_pb2.HookResponse(
                    changeFileInfo=hook_pb2.FileInfoChanges(id="grpc-id", metaData={"via": "grpc"}),
                    httpResponse=hook_pb2.HTTPResponse(header={"X-Hook": "grpc"}),
                )
            return hook_pb2.HookResponse()

    server, port = await start_grpc_hook_server(Handler())
    try:
        backend = GrpcHookBackend(f"127.0.0.1:{port}", backoff=0.01)
        hooks = Hooks(backend, ("pre-create", "post-finish"))
        client = client_factory(hooks=hooks)
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "2", "Upload-Metadata": "filename b2s="})
        assert r.status_code == 201 and r.headers["location"].endswith("/files/grpc-id")
        assert r.headers["x-hook"] == "grpc"
        await patch(client, r.headers["location"], 0, b"hi")
        assert (await client.head(r.headers["location"])).headers["upload-metadata"] == "via Z3JwYw=="
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "2", "Upload-Metadata": "filename YmFk"})
        assert r.status_code == 422 and r.text == "no"
        await hooks.drain()
        assert sorted(m.type for m in received) == ["post-finish", "pre-create", "pre-create"]
        first = received[0]
        assert first.event.upload.size == 2 and first.event.httpRequest.method == "POST"
        assert first.event.httpRequest.header["Upload-Length"] == "2"
        [finish] = [m for m in received if m.type == "post-finish"]
        assert finish.event.upload.id == "grpc-id" and finish.event.upload.offset == 2
        await backend.aclose()
    finally:
        await server.stop(None)
    # A server that is gone: retried, then a 500 for a blocking hook.
    backend = GrpcHookBackend(f"127.0.0.1:{port}", retry=1, backoff=0.01, timeout=2)
    r = await client_factory(hooks=Hooks(backend, ("pre-create",))).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500


async def test_tusd_style_script_with_lower_case_fields_and_counters(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    script(hooks_dir, "pre-create", "#!/bin/sh\ncat > /dev/null\n"
           'echo \'{"rejectupload": true, "httpresponse": {"statuscode": 418, "body": "teapot"}}\'\n')
    script(hooks_dir, "pre-terminate", "#!/bin/sh\nexit 1\n")
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create", "pre-terminate"))
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 418 and r.text == "teapot"
    counters = hooks.metrics()
    assert counters["tusd_hook_invocations_total"]["pre-create"] == 1
    assert counters["tusd_hook_errors_total"]["pre-create"] == 0


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


async def test_grpc_hooks_over_tls(client_factory, tmp_path):
    import subprocess

    import grpc
    from grpc import aio

    from pytusd.hooks.grpc import GrpcHookBackend
    from pytusd.hooks.proto import hook_pb2, hook_pb2_grpc

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days",
         "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )

    class Handler(hook_pb2_grpc.HookHandlerServicer):
        async def InvokeHook(self, request, context):
            return hook_pb2.HookResponse(changeFileInfo=hook_pb2.FileInfoChanges(id="over-tls"))

    server = aio.server()
    hook_pb2_grpc.add_HookHandlerServicer_to_server(Handler(), server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        backend = GrpcHookBackend(f"localhost:{port}", secure=True, server_certificate=str(cert), retry=0)
        client = client_factory(hooks=Hooks(backend, ("pre-create",)))
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status_code == 201 and r.headers["location"].endswith("/files/over-tls")
        plain = GrpcHookBackend(f"localhost:{port}", retry=0, timeout=2)  # no TLS: the server refuses
        r = await client_factory(hooks=Hooks(plain, ("pre-create",))).post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status_code == 500
    finally:
        await server.stop(None)


def test_generated_grpc_modules_match_the_proto(tmp_path):
    """The committed hook_pb2 was generated from hook.proto as it is now (scripts/gen-proto after any change)."""
    import importlib.resources
    import shutil

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    from pytusd.hooks.proto import hook_pb2

    source = importlib.resources.files("pytusd.hooks.proto") / "hook.proto"
    target = tmp_path / "pytusd" / "hooks" / "proto"
    target.mkdir(parents=True)
    shutil.copy(str(source), target / "hook.proto")
    out = tmp_path / "descriptor.bin"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}",
                        "pytusd/hooks/proto/hook.proto"]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto()
    hook_pb2.DESCRIPTOR.CopyToProto(committed)

    def normalise(messages):  # json_name is filled by protoc but not by CopyToProto
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            normalise(message.nested_type)

    normalise(fresh.message_type)
    normalise(committed.message_type)
    assert fresh == committed
    assert [m.name for m in fresh.service[0].method] == ["InvokeHook"] and fresh.package == "proto"


async def test_plain_callable_on_the_config(client_factory):
    seen = []

    async def on_event(hook_type, request):
        seen.append(hook_type)
        if hook_type == "pre-create" and request["Event"]["Upload"]["Size"] > 10:
            return {"RejectUpload": True}

    client = client_factory(hooks=on_event)
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "11"})).status_code == 400
    url = await create(client, 1)
    await patch(client, url, 0, b"x")
    await client.app.handlers.hooks.drain()
    assert {"pre-create", "post-create", "pre-finish", "post-finish", "post-receive"} <= set(seen)
    assert "pre-access" not in seen
