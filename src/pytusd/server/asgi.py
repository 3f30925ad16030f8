"""What the HTTP/1.1 connection and the HTTP/2 streams share: the ASGI scope, response header checks, the Date
header, and running the app for one request.

The server speaks ASGI 3 to any app; pytusd's own features ride in ``scope["extensions"]`` (pytusd.core.http):
request trailers, splicing a body into a file, and interim (1xx) responses.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.http import CONNECTIONS_EXTENSION, TRAILERS_EXTENSION

log = logging.getLogger("pytusd.server")

ASGI = {"version": "3.0", "spec_version": "2.3"}

_PHRASES = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_PHRASES[104] = b"Upload Resumption Supported"  # the IETF draft's interim response (not in http.HTTPStatus)


def reason(status: int) -> bytes:
    return _PHRASES.get(status, b"")


class ResponseError(Exception):
    """The app sent something that cannot go on the wire (a bad header, messages out of order): a bug of the
    app's; the client gets a 500 if nothing was sent yet, else the connection is closed."""


_FORBIDDEN_IN_NAME = frozenset(b"\r\n:\0 \t")


def check_header(name: bytes, value: bytes) -> None:
    """A response header must not split the response: no CR, LF or NUL anywhere, no empty name."""
    if not name or b"\r" in value or b"\n" in value or b"\0" in value or not _FORBIDDEN_IN_NAME.isdisjoint(name):
        raise ResponseError(f"invalid response header {name!r}: {value!r}")


class HttpDate:
    """The Date header's value, made once a second (Go's server sends Date on every response, so does pytusd)."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = email.utils.formatdate(second, usegmt=True).encode()
        return self.value


def split_target(target: bytes) -> tuple[bytes, bytes] | None:
    """A request target's path and query, or None when it is not one a server answers (absolute URLs are
    reduced to their path, as Go does; ``*`` stays ``*``)."""
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        path = path.partition(b"#")[0]
        return path, query.partition(b"#")[0]
    if target == b"*":
        return b"*", b""
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        slash = rest.find(b"/")
        return split_target(rest[slash:]) if slash >= 0 else (b"/", rest.partition(b"?")[2])
    return None


def decode_path(raw_path: bytes) -> str:
    """The ASGI ``path``: percent-decoded UTF-8 (invalid sequences replaced, as other ASGI servers do)."""
    text = raw_path.decode("latin-1")
    return urllib.parse.unquote(text) if "%" in text else text


def make_scope(
    *,
    http_version: str,
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    scheme: str,
    server: tuple[str, int] | None,
    client: tuple[str, int] | None,
    state: dict[str, Any],
    extensions: dict[str, Any],
    counts_connections: bool = False,
) -> dict[str, Any]:
    if counts_connections:
        extensions[CONNECTIONS_EXTENSION] = True
    # This server passes request trailers on: a request without a trailer section has none (see TRAILERS_EXTENSION).
    extensions.setdefault(TRAILERS_EXTENSION, ())
    return {
        "type": "http",
        "asgi": ASGI,
        "http_version": http_version,
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": method,
        "root_path": "",
        "path": decode_path(raw_path),
        "raw_path": raw_path,
        "query_string": query,
        "headers": headers,
        "state": state.copy(),
        "extensions": extensions,
    }


def peer(transport: Any, name: str) -> tuple[str, int] | None:
    """``peername``/``sockname`` of a transport as ASGI wants it: (host, port), or None for UNIX sockets."""
    address = transport.get_extra_info(name)
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


async def run_app(
    app: Callable[..., Awaitable[None]],
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> BaseException | None:
    """Run the app for one request; returns what it raised (logged here), or None."""
    try:
        await app(scope, receive, send)
    except BaseException as exc:  # noqa: BLE001 - any failure of the app is this request's alone
        if isinstance(exc, ResponseError):
            log.error("the app's response cannot be sent: %s", exc)
        elif not isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):  # not the server's cancel
            log.exception("the app failed on %s %s", scope.get("method"), scope.get("path"))
        return exc
    return None


INTERNAL_ERROR = b"Internal Server Error"


def resolve(future: asyncio.Future[None] | None) -> None:
    """Wake whoever waits on ``future`` (if anyone still does)."""
    if future is not None and not future.done():
        future.set_result(None)


class Exchange:
    """What an HTTP/1.1 request (h1.Cycle) and an HTTP/2 stream (h2.Stream) share on the ASGI side: the body pieces
    received and not yet read by the app, the one waiter of ``receive()``, and how ``receive()`` ends."""

    __slots__ = ("loop", "scope", "body", "more_body", "waiter", "disconnected", "started", "complete", "final_sent",
                 "head_only")

    def __init__(self, loop: asyncio.AbstractEventLoop, scope: dict[str, Any]) -> None:
        self.loop = loop
        self.scope = scope
        self.body: list[bytes] = []  # the very bytes that came, not yet read by the app
        self.more_body = True  # the request body is not complete yet
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.started = False  # the response started
        self.complete = False  # the response is complete
        self.final_sent = False  # the app was told the body is complete
        self.head_only = scope["method"] == "HEAD"

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        resolve(waiter)

    async def wait(self) -> None:
        self.waiter = waiter = self.loop.create_future()
        await waiter

    def take_body(self) -> dict[str, Any]:
        """The ``http.request`` message of the pieces that wait (there are some)."""
        pieces, self.body = self.body, []
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if not self.more_body:
            self.final_sent = True
        return {"type": "http.request", "body": data, "more_body": self.more_body}

    async def no_body_left(self) -> dict[str, Any]:
        """``receive()`` once no piece waits and none will come: the body's end (once), then, as ASGI says, a wait
        until the client goes away or the response is complete."""
        if self.disconnected:
            return {"type": "http.disconnect"}
        if not self.final_sent:
            self.final_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while not self.disconnected and not self.complete:
            await self.wait()
        return {"type": "http.disconnect"}
