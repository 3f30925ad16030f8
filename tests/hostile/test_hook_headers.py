"""Client headers forwarded to hooks (``--hooks-http-forward-headers``) replaced the hook request's own: the hook
server got ``Host: attacker.example``, ``Transfer-Encoding: chunked`` beside a ``Content-Length``, and a client's
``Content-Length: 0`` failed the hook call (500). The rule now (pytusd.hooks.base.hook_request_headers, used by the
HTTP and Fireboom backends, and by the gRPC backend for the call metadata of ``--hooks-grpc-forward-headers``; without
that flag it sends no client header as metadata at all): forwarded fields are added first and can never replace or
add framing, routing or pytusd's own fields, and a value that cannot travel in a header is dropped.

The hook servers are real ones on 127.0.0.1: a raw socket server that records the exact bytes of every request
head, and a gRPC server built from the proto.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading

import pytest

from pytusd import Hooks
from pytusd.hooks.base import NEVER_FORWARDED, hook_request_headers, may_forward

from ..conftest import TUS, start_grpc_hook_server
from .conftest import asgi

FORWARD = "Host,Content-Type,Content-Length,Transfer-Encoding,Authorization"


class RawHookServer:
    """An HTTP hook receiver on 127.0.0.1 that keeps every request as it arrived: its head's raw bytes, its header
    fields in order (repeats kept) and its body, read by Content-Length or chunked framing as the head says. It
    answers ``{}`` (200) to everything."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline(65537)
                        if not line:
                            return
                        head += line
                    lines = head[:-4].split(b"\r\n")
                    fields = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
                    names = {name.lower() for name, _ in fields}
                    body = b""
                    if b"transfer-encoding" in names:
                        while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                            body += self.rfile.read(size)
                            self.rfile.readline()
                        self.rfile.readline()
                    elif b"content-length" in names:
                        length = int(dict((n.lower(), v) for n, v in fields)[b"content-length"])
                        body = self.rfile.read(length)
                    outer.requests.append({"line": lines[0], "head": head, "fields": fields, "body": body})
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def raw_hook_server():
    server = RawHookServer()
    yield server
    server.close()


def values(request: dict, name: bytes) -> list[bytes]:
    return [v for n, v in request["fields"] if n.lower() == name.lower()]


def assert_own_framing(request: dict, port: int) -> None:
    """The hook request is pytusd's: its own Host, JSON, one correct Content-Length, no other framing."""
    assert values(request, b"host") == [b"127.0.0.1:%d" % port], request["head"]
    assert values(request, b"content-type") == [b"application/json"], request["head"]
    assert values(request, b"content-length") == [str(len(request["body"])).encode()], request["head"]
    assert values(request, b"connection") in ([], [b"keep-alive"])  # httpx's own
    for name in (b"transfer-encoding", b"te", b"trailer", b"upgrade", b"expect", b"keep-alive"):
        assert values(request, name) == [], (name, request["head"])
    json.loads(request["body"])


# -- the rule itself --------------------------------------------------------------------------------------------


def test_the_rule():
    incoming = {
        "Host": ["attacker.example"], "Content-Type": ["text/evil"], "Content-Length": ["0"],
        "Transfer-Encoding": ["chunked"], "Connection": ["close"], "Proxy-Authorization": ["Basic x"],
        "Authorization": ["Bearer t"], "X-Many": ["a", "b"], "X-Latin": ["caf\xe9"], "X-Crlf": ["a\r\nX-Injected: 1"],
        "X-Nul": ["a\x00b"], "X-Ctl": ["a\x01b"], "X-Some": ["ok", "bad\nvalue"], "Hook-Name": ["pre-finish"],
        "X-Request-Id": ["forged"], "Traceparent": ["00-forged"], "Idempotency-Key": ["forged"], "X-Empty": [""],
    }
    forward = [*incoming, "authorization", "Not A Name", "X-Missing"]
    own = {"Hook-Name": "pre-create", "X-Request-ID": "abc", "Content-Type": "application/json"}
    headers = hook_request_headers(own, incoming, forward)
    assert headers == {
        "Authorization": "Bearer t", "X-Many": "a, b", "X-Latin": "caf\xe9", "X-Some": "ok",
        "Hook-Name": "pre-create", "X-Request-ID": "abc", "Content-Type": "application/json",
    }
    for name in NEVER_FORWARDED | {"proxy-authorization", "Proxy-Anything", "bad name", "x:y", ""}:
        assert not may_forward(name) and not may_forward(name.upper())
    # pytusd's own fields win whatever the spelling of a forwarded one (which the rule refuses anyway).
    assert hook_request_headers({"x-custom": "own"}, {"X-Custom": ["client"]}, ["X-CUSTOM"]) == {"x-custom": "own"}


# -- a real pytusd process and the raw hook server ---------------------------------------------------------------


def _post(port: int, extra: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n" + extra + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            assert more, answer
            answer += more
        return answer


@pytest.mark.e2e
def test_forwarded_headers_never_frame_the_hook_request(pytusd_factory, raw_hook_server):
    hook = raw_hook_server
    server = pytusd_factory("--hooks-http", hook.url, "--hooks-http-forward-headers", FORWARD,
                            "--hooks-enabled-events", "pre-create", "--hooks-http-backoff", "0.01")
    attacks = [
        b"Host: attacker.example\r\nContent-Type: text/evil\r\nContent-Length: 0\r\nAuthorization: Bearer t\r\n",
        b"Host: attacker.example\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer t\r\n",
        b"Host: attacker.example\r\nContent-Length: 0\r\nAuthorization: Bearer caf\xe9\r\n",  # obs-text, Latin-1
    ]
    bodies = [b"", b"0\r\n\r\n", b""]
    for attack, body in zip(attacks, bodies, strict=True):
        before = len(hook.requests)
        answer = _post(server.port, attack, body)
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
        [request] = hook.requests[before:]
        assert request["line"] == b"POST /hooks HTTP/1.1"
        assert_own_framing(request, hook.port)
        authorization = b"Bearer caf\xe9" if b"caf" in attack else b"Bearer t"
        assert values(request, b"authorization") == [authorization]
        assert values(request, b"hook-name") == [b"pre-create"]
        request_id = re.search(rb"\r\nx-request-id: ([0-9a-f]{32})\r\n", answer).group(1)
        assert values(request, b"x-request-id") == [request_id]
        payload = json.loads(request["body"])  # the client's own headers still reach the hook, as data
        assert payload["Event"]["HTTPRequest"]["Header"]["Host"] == ["attacker.example"]
    log = server.log()
    assert "Traceback" not in log and "level=ERROR" not in log, log[-3000:]
    assert "never carry these client headers" in log and "Host, Content-Type, Content-Length" in log


# -- values no real server would pass on (in-process: another ASGI server might) -------------------------------


async def test_values_that_cannot_travel_are_dropped(client_factory, raw_hook_server):
    from pytusd.hooks import HttpHookBackend

    hook = raw_hook_server
    backend = HttpHookBackend(hook.url, forward_headers=["Authorization", "X-A", "X-B", "Host"], backoff=0.01)
    client = client_factory(hooks=Hooks(backend, ("pre-create",)))
    for value in (b"Bearer x\r\nX-Injected: 1", b"a\x00b", b"a\nb", b"a\rb", b"\x1b[31m", b"a\x7fb"):
        before = len(hook.requests)
        status, _, body = await asgi(client.app, "POST", "/files/", [
            (b"tus-resumable", b"1.0.0"), (b"upload-length", b"1"), (b"authorization", value), (b"x-a", value),
            (b"x-b", b"kept"), (b"host", value)])
        assert status == 201, body
        [request] = hook.requests[before:]
        assert_own_framing(request, hook.port)
        assert values(request, b"authorization") == [] and values(request, b"x-a") == []
        assert values(request, b"x-injected") == [] and values(request, b"x-b") == [b"kept"]
    await backend.aclose()


async def test_fireboom_requests_carry_only_their_own_headers(client_factory, raw_hook_server):
    from pytusd.hooks.fireboom import FireboomHookBackend

    hook = raw_hook_server
    backend = FireboomHookBackend(f"http://127.0.0.1:{hook.port}")
    client = client_factory(hooks=Hooks(backend, ("pre-create",)))
    status, headers, body = await asgi(client.app, "POST", "/files/", [
        *[(k.lower().encode(), v.encode()) for k, v in TUS.items()], (b"upload-length", b"1"),
        (b"content-type", b"text/evil"), (b"transfer-encoding", b"chunked"), (b"authorization", b"Bearer t"),
        (b"x-request-id", b"forged\r\nX-Injected: 1")])
    assert status == 201, body
    [request] = hook.requests
    assert request["line"] == b"POST /upload/tus/default/preUpload HTTP/1.1"
    assert_own_framing(request, hook.port)
    assert values(request, b"authorization") == [] and values(request, b"x-injected") == []
    assert values(request, b"x-request-id") == [headers["x-request-id"].encode()]
    await backend.poster.aclose()


async def test_grpc_hooks_send_no_client_header_as_metadata(client_factory):
    """gRPC carries the client's headers inside the HookRequest message (tusd's proto), never as call metadata, so
    no client value can become a reserved key (content-type, te, host, grpc-*, -bin)."""
    from pytusd.hooks.grpc import GrpcHookBackend
    from pytusd.hooks.proto import hook_pb2, hook_pb2_grpc

    received = []

    class Handler(hook_pb2_grpc.HookHandlerServicer):
        async def InvokeHook(self, request, context):
            received.append((request, [(k, v) for k, v in context.invocation_metadata()]))
            return hook_pb2.HookResponse()

    server, port = await start_grpc_hook_server(Handler())
    try:
        backend = GrpcHookBackend(f"127.0.0.1:{port}", backoff=0.01)
        client = client_factory(hooks=Hooks(backend, ("pre-create",)))
        hostile = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"grpc-timeout", b"1n"),
                   (b"x-data-bin", b"%%%"), (b"authorization", b"Bearer t"), (b"x-latin", b"caf\xe9"),
                   (b"host", b"attacker.example")]
        status, _, body = await asgi(client.app, "POST", "/files/", [
            (b"tus-resumable", b"1.0.0"), (b"upload-length", b"1"), *hostile])
        assert status == 201, body
        [(message, metadata)] = received
        keys = {k for k, _ in metadata}
        assert keys <= {"user-agent", "grpc-accept-encoding", "grpc-timeout"}, metadata
        assert dict(metadata).get("grpc-timeout", "") != "1n"
        assert message.event.httpRequest.header["Authorization"] == "Bearer t"
        assert message.event.httpRequest.header["X-Latin"] == "caf\xe9"
        await backend.aclose()
    finally:
        await server.stop(None)


async def test_grpc_forward_headers_become_call_metadata_by_the_same_rule(client_factory):
    """tusd's -hooks-grpc-forward-headers: the named client headers are sent as call metadata (lowercase keys), by
    the rule of every backend, and never as a key gRPC keeps for itself or a value it cannot carry."""
    from pytusd.hooks.grpc import GrpcHookBackend
    from pytusd.hooks.proto import hook_pb2, hook_pb2_grpc

    received = []

    class Handler(hook_pb2_grpc.HookHandlerServicer):
        async def InvokeHook(self, request, context):
            received.append([(k, v) for k, v in context.invocation_metadata()])
            return hook_pb2.HookResponse()

    server, port = await start_grpc_hook_server(Handler())
    try:
        forward = ["Authorization", "X-Tenant", "x-many", "Host", "Content-Type", "TE", "grpc-timeout", "x-data-bin",
                   "User-Agent", "X-Latin", "X-Tab", "X-Missing", "X-Request-ID"]
        backend = GrpcHookBackend(f"127.0.0.1:{port}", backoff=0.01, forward_headers=forward)
        client = client_factory(hooks=Hooks(backend, ("pre-create",)))
        sent = [(b"authorization", b"Bearer t"), (b"x-tenant", b"acme"), (b"x-many", b"a"), (b"x-many", b"b"),
                (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"grpc-timeout", b"1n"),
                (b"x-data-bin", b"%%%"), (b"user-agent", b"evil"), (b"x-latin", b"caf\xe9"), (b"x-tab", b"a\tb"),
                (b"host", b"attacker.example"), (b"x-request-id", b"forged")]
        status, _, body = await asgi(client.app, "POST", "/files/", [
            (b"tus-resumable", b"1.0.0"), (b"upload-length", b"1"), *sent])
        assert status == 201, body
        [metadata] = received
        forwarded = [(k, v) for k, v in metadata if k not in ("user-agent", "grpc-accept-encoding", "grpc-timeout")]
        assert forwarded == [("authorization", "Bearer t"), ("x-tenant", "acme"), ("x-many", "a, b")], metadata
        assert dict(metadata).get("grpc-timeout", "") != "1n" and "evil" not in dict(metadata).get("user-agent", "")
        await backend.aclose()
    finally:
        await server.stop(None)


def test_grpc_forward_headers_flag_reaches_the_backend(tmp_path):
    from pytusd.server.cli.compose import hooks_from_args
    from pytusd.server.cli.flags import build_parser, normalise_argv

    parser = build_parser()
    argv = ["-hooks-grpc", "127.0.0.1:1", "-hooks-grpc-forward-headers", "Authorization, X-Tenant"]
    hooks = hooks_from_args(parser.parse_args(normalise_argv(argv, parser)))
    [(backend, _)] = hooks.bindings
    assert backend.forward_headers == ["Authorization", "X-Tenant"]
    assert hooks_from_args(parser.parse_args(["--hooks-grpc", "127.0.0.1:1"])).bindings[0][0].forward_headers == []
