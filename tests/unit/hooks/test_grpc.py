"""gRPC hooks (tusd's hook.proto) against a gRPC server built from the .proto, in clear text and over TLS; the
generated modules match the .proto."""

from __future__ import annotations

from pytusd.hooks import Hooks

from tests.conftest import TUS, patch, start_grpc_hook_server


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
