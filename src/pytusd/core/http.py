"""The small slice of HTTP the app needs on top of raw ASGI: a request view and a response to send.

No framework sits in the hot path: a :class:`Request` is built straight from the ASGI scope, and a
:class:`Response` is two ASGI messages (or a stream for downloads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from ..asgitypes import Receive, Scope, Send
from ..errors import TusError
from . import grammar
from .body import RequestBody

# The scope extension under which pytusd's own server passes request trailers (a sequence of (name, value) byte
# pairs, complete once the last body chunk was received). ASGI itself has no event for request trailers. The server
# puts it in every request's scope (empty where the request has no trailer section), so its presence says that the
# server passes trailers on, even on the OPTIONS request that asks which extensions there are.
TRAILERS_EXTENSION = "pytusd.request_trailers"
# The scope extension under which pytusd's own server offers to splice a request body into a file
# (pytusd.server.splice).
SPLICE_EXTENSION = "pytusd.splice"
# Present in the scope extensions when the server can send interim (1xx) responses before the final one: the app sends
# {"type": "pytusd.response.informational", "status": 104, "headers": [...]} before "http.response.start".
INFORMATIONAL_EXTENSION = "pytusd.informational"
# Present when the server itself counts its connections in the app's metrics (tusd_connections_open): the app then
# does not count the request as one. A fact of the server that carried the request, so it travels with the request.
CONNECTIONS_EXTENSION = "pytusd.connections_counted"


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            repeated.setdefault(name, [headers[name]]).append(value)
        headers[name] = value
    # Repeated headers are joined, so a repeated tus header fails its parser instead of picking one silently; once
    # each, in linear time whatever the number of repeats.
    for name, values in repeated.items():
        headers[name] = ", ".join(values)
    return headers


class Request:
    """One HTTP request as the handler flows see it."""

    __slots__ = (
        "scope",
        "receive",
        "method",
        "path",
        "headers",
        "upload_id",
        "body",
        "stop_error",
        "network_timeout",
        "min_body_rate",
        "interim",
    )

    def __init__(self, scope: Scope, receive: Receive, network_timeout: float, min_body_rate: float = 0.0) -> None:
        self.scope = scope
        self.receive = receive
        self.headers = _headers(scope)
        self.method: str = grammar.method_override(scope["method"], self.headers.get("x-http-method-override"))
        path: str = scope.get("path", "/")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        self.path = path
        self.upload_id = ""
        self.body: RequestBody | None = None
        self.stop_error: TusError | None = None
        self.network_timeout = network_timeout
        self.min_body_rate = min_body_rate
        self.interim: Send | None = None  # where the server can send interim (1xx) responses: see send_interim()

    async def send_interim(self, status: int, headers: dict[str, str]) -> None:
        """An interim (1xx) response before the final one, where the server can send it (pytusd's own server,
        HTTP/1.1 and HTTP/2: INFORMATIONAL_EXTENSION); elsewhere nothing."""
        if self.interim is not None:
            raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
            await self.interim({"type": "pytusd.response.informational", "status": status, "headers": raw})

    @property
    def content_length(self) -> int | None:
        return grammar.parse_non_negative_int(self.headers.get("content-length"))

    @property
    def has_body(self) -> bool:
        return bool(self.content_length) or "chunked" in self.headers.get("transfer-encoding", "").lower()

    def open_body(self, limit: int) -> RequestBody:
        """The body as a :class:`RequestBody` reading at most ``limit`` bytes."""
        body = RequestBody(self.receive, self.network_timeout, limit, self.min_body_rate)
        body.splicer = self.scope.get("extensions", {}).get(SPLICE_EXTENSION)
        if self.stop_error is not None:
            body.error = self.stop_error
        self.body = body
        return body

    @property
    def body_consumed(self) -> bool:
        if self.body is not None:
            return self.body.complete
        return not self.has_body

    @property
    def trailers_passed(self) -> bool:
        """Whether the server that carried this request passes request trailers on (pytusd's own server does)."""
        return TRAILERS_EXTENSION in self.scope.get("extensions", ())

    def trailer(self, name: str) -> str | None:
        """A request trailer field (after the body was read), where the server passes trailers on."""
        trailers = self.scope.get("extensions", {}).get(TRAILERS_EXTENSION)
        if not trailers:
            return None
        wanted = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in trailers if k == wanted]
        return ", ".join(values) if values else None

    def hook_http(self) -> dict[str, object]:
        """The request as tusd's hooks see it: Method, URI, RemoteAddr and Header (canonical names, value lists)."""
        header: dict[str, list[str]] = {}
        for raw_name, raw_value in self.scope.get("headers", ()):
            name = "-".join(part.capitalize() for part in raw_name.decode("latin-1").split("-"))
            header.setdefault(name, []).append(raw_value.decode("latin-1"))
        query = self.scope.get("query_string", b"").decode("latin-1")
        client = self.scope.get("client")
        return {
            "Method": self.method,
            "URI": self.scope.get("path", "/") + (f"?{query}" if query else ""),
            "RemoteAddr": f"{client[0]}:{client[1]}" if client else "",
            "Header": header,
        }

    def interrupt(self, error: TusError) -> None:
        """Stop this request's body (now or as soon as it is opened) for ``error``; the first reason wins."""
        if self.stop_error is None:
            self.stop_error = error
        if self.body is not None:
            self.body.interrupt(error)

    def origin(self, behind_proxy: bool) -> tuple[str, str]:
        host = self.headers.get("host")
        if host is None and (server := self.scope.get("server")):
            host = f"{server[0]}:{server[1]}" if server[1] else server[0]
        return grammar.request_origin(self.scope.get("scheme", "http"), host, self.headers, behind_proxy)

    @property
    def mount_prefix(self) -> str:
        """Where the app is mounted (ASGI ``root_path``), for URLs that point back at it."""
        root_path: str = self.scope.get("root_path", "")
        return root_path.rstrip("/")


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def from_error(cls, error: TusError) -> Response:
        headers = {"Content-Type": "text/plain; charset=utf-8", **error.headers}
        return cls(error.status, headers, error.body.encode("utf-8"))

    async def send(self, send: Send, head_only: bool = False) -> None:
        headers = self.headers
        if self.stream is None and "Content-Length" not in headers and self.status not in (204, 304):
            headers["Content-Length"] = str(len(self.body))
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        if head_only or self.stream is None:
            await send({"type": "http.response.body", "body": b"" if head_only else self.body})
            return
        async for block in self.stream:
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
