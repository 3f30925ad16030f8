"""HTTP/1.1: one connection, its requests one after the other, each handed to the ASGI app.

The bytes of a connection go through a small state machine (``phase``):

- ``HEAD``: a request line and header fields. The connection finds where the head ends itself (bare-LF line endings
  allowed, as Go reads them), counts it against ``--max-header-size`` before the parser sees it (431 past it), and
  feeds exactly the head to httptools (llhttp). The head must be complete within the network timeout of its first
  byte, and a kept-alive connection may stay silent that long between requests (tusd's ReadHeaderTimeout and
  IdleTimeout).
- ``BODY``: a body delimited by Content-Length bypasses the parser: the ``bytes`` read from the socket are the body,
  handed to the app as they arrived (no copies), or spliced from the socket into a file (pytusd.server.splice).
- ``CHUNKED``: a chunked body goes through the parser, after :class:`ChunkedFraming` has bounded its chunk-size lines
  and trailer section; its trailers reach the app as ``scope["extensions"][TRAILERS_EXTENSION]``.
- ``DONE``: the request is read; bytes of a pipelined request that follows wait (reading paused) until the response
  is complete. Responses are therefore in order, and one request runs at a time per connection.

Flow control: reading pauses while more than HIGH_WATER body bytes wait for the app, and while a splice owns the
socket; ``send()`` waits while the transport's write buffer is full. A response that ends before its request body
was read closes the connection (lingering a moment so the client sees the response, as Go does).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools

from .. import errors
from ..core.http import INFORMATIONAL_EXTENSION, SPLICE_EXTENSION, TRAILERS_EXTENSION
from . import splice as splicing
from .asgi import (
    INTERNAL_ERROR,
    Exchange,
    ResponseError,
    check_header,
    make_scope,
    peer,
    reason,
    resolve,
    run_app,
    split_target,
)
from .framing import ChunkedFraming, FramingTooLarge, find_head_end, normalize_head

log = logging.getLogger("pytusd.server")

HIGH_WATER = 256 * 1024  # body bytes waiting for the app before the connection stops reading
LINGER = 1.0  # seconds a connection closed with an unread request body still reads (and drops) what comes ...
LINGER_BYTES = 256 * 1024  # ... up to this many bytes (as Go's server drains an unread body)

HEAD, BODY, CHUNKED, DONE, CLOSED = range(5)
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class H1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection (``state`` is the server's shared :class:`pytusd.server.lifecycle.ServerState`)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.options = state.options
        self.loop: asyncio.AbstractEventLoop = state.loop
        self.transport: Any = None
        self.phase = HEAD
        self.head_buf = bytearray()  # the request head so far, when it came in several reads
        self.head_size = 0
        self.head_tail = b""
        self.body_left = 0  # BODY: bytes of the body still to come
        self.framing: ChunkedFraming | None = None
        self.parser: Any = None
        self.cycle: Cycle | None = None
        self.excess = b""  # bytes after the current request, kept until its response is complete
        self.reading = True
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        # The network timeout's deadline (None: none runs) and the one timer that watches it: re-armed per request by
        # moving the deadline, the timer itself rescheduled only when it fires early (no timer made per request).
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.linger: asyncio.TimerHandle | None = None  # closes a lingering connection (_close)
        self.idle = True  # waiting for a request's first byte (the timer is the idle one)
        self.splicing: Any = None  # the running splice (pytusd.server.splice), which owns the socket meanwhile
        self.closing = False  # no further request on this connection
        self.lingered = 0
        self.tls = False
        self.scheme = "http"
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        # what the parser reports of the head being parsed
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: int | None = None
        self._chunked = False
        self._expect = False
        self._connection = b""
        self._codings = False  # a transfer coding other than chunked
        self._hosts = 0  # Host header fields
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._headers_done = False

    # -- the transport's callbacks ----------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.scheme = "https" if self.tls else "http"
        self.client = peer(transport, "peername")
        self.server = peer(transport, "sockname")
        self.state.connection_opened(self)
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object.selected_alpn_protocol() == "h2":
                self._become_h2(b"")
                return
        elif self.options.enable_h2c:
            self.preface: bytes | None = b""  # the first bytes, until they tell HTTP/2's preface from HTTP/1.1
        self._arm_timer()

    preface: bytes | None = None

    def reads_body_of(self, cycle: object) -> bool:
        """Whether the connection is reading the body of that request now (a splice asks before it takes over)."""
        return self.cycle is cycle and self.phase == BODY

    def _become_h2(self, data: bytes) -> None:
        """Hand the connection to HTTP/2 (ALPN chose it, or the h2c preface came)."""
        from .h2 import H2Connection

        self._stop_timers()
        self.phase = CLOSED
        conn = H2Connection(self.state)
        self.state.replace(self, conn)
        self.transport.set_protocol(conn)
        conn.take_over(self.transport, data)
        if self.state.stopping:
            conn.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self._stop_timers()
        if self.splicing is not None:
            self.splicing.finish(False)
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True
            cycle.wake()
        resolve(self.drained)
        self.state.connection_closed(self)

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed client sends no further request

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        resolve(self.drained)
        self.drained = None

    def data_received(self, data: bytes) -> None:
        if self.preface is not None:  # --enable-h2c, and the connection's first bytes
            from .h2 import PREFACE

            data = self.preface + data
            if PREFACE.startswith(data):
                self.preface = data
                return
            self.preface = None
            if data.startswith(PREFACE):
                self._become_h2(data)
                return
        phase = self.phase
        if phase == DONE:
            self.excess += data
            self._update_reading()
            return
        if phase == CLOSED:  # lingering: dropped, up to a bound
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport.close()
            return
        try:
            self._consume(data)
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")

    # -- reading requests -------------------------------------------------------------------------------------------

    def _consume(self, data: bytes) -> None:
        while data:
            phase = self.phase
            if phase == BODY:
                cycle = self.cycle
                assert cycle is not None  # BODY: a request is being read
                left = self.body_left
                if len(data) <= left:
                    self.body_left = left - len(data)
                    cycle.piece(data)
                    if self.body_left == 0:
                        self._body_complete()
                    return
                self.body_left = 0
                cycle.piece(data[:left])
                self._body_complete()
                data = data[left:]
            elif phase == HEAD:
                data = self._head(data)
            elif phase == CHUNKED:
                data = self._chunked_body(data)
            elif phase == DONE:
                self.excess += data
                self._update_reading()
                return
            else:
                return

    def _head(self, data: bytes) -> bytes:
        if self.idle:
            if not self.head_size:
                data = data.lstrip(b"\r\n")  # blank lines before a request line are skipped (RFC 9112)
                if not data:
                    return b""
            self.idle = False
            self._arm_timer()  # the head's own deadline starts with its first byte
        end = find_head_end(self.head_tail, data)
        size = len(data) if end < 0 else end
        limit = self.options.max_header_size
        if limit and self.head_size + size > limit:
            self._reject(431, f"the request line and header fields may take {limit} bytes at most",
                         errors.ERR_HEADERS_TOO_LARGE)
            return b""
        self.head_size += size
        if end < 0:
            self.head_buf += data
            self.head_tail = (self.head_tail + data[-2:])[-2:]
            return b""
        if self.head_buf:
            self.head_buf += data[:end]
            head = bytes(self.head_buf)
            self.head_buf = bytearray()
        else:
            head = data[:end] if end < len(data) else data
        self.head_size, self.head_tail = 0, b""
        self._parse_head(normalize_head(head))
        return data[end:] if end < len(data) else b""

    def _parse_head(self, head: bytes) -> None:
        self._cancel_timer()
        self._target, self._headers, self._length, self._chunked, self._expect = b"", [], None, False, False
        self._trailers, self._headers_done, self._connection = None, False, b""
        self._codings, self._hosts = False, 0
        parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # an Upgrade this server does not do: answered as a plain request (as Go's server does)
        if not self._headers_done:
            raise httptools.HttpParserError("incomplete request head")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._reject(505, "HTTP version not supported")
            return
        if self._codings:
            self._reject(501, "unsupported transfer encoding")
            return
        if version == "1.1" and self._hosts != 1:  # RFC 9112 section 3.2, as Go's server refuses them
            self._reject(400, "missing required Host header" if not self._hosts else "too many Host headers")
            return
        method = parser.get_method().decode("latin-1")
        target = split_target(self._target)
        if target is None:
            raise httptools.HttpParserError("invalid request target")
        tokens = self._connection.lower()
        if version == "1.1":
            keep_alive = b"close" not in tokens
        else:
            keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        keep_alive = keep_alive and not self.closing
        extensions: dict[str, Any] = {}
        if self._chunked:
            self.framing = ChunkedFraming(self.options.framing_limits)
            self._trailers = []
            extensions[TRAILERS_EXTENSION] = self._trailers
            self.phase = CHUNKED
        elif self._length:
            self.body_left = self._length
            self.phase = BODY
        else:
            self.phase = DONE
        if version == "1.1":
            extensions[INFORMATIONAL_EXTENSION] = True
        scope = make_scope(
            http_version=version, method=method, raw_path=target[0], query=target[1], headers=self._headers,
            scheme=self.scheme, server=self.server, client=self.client, state=self.state.app_state,
            counts_connections=self.state.metrics is not None,
            extensions=extensions,
        )
        cycle = self.cycle = Cycle(self, scope, keep_alive, self._expect and version == "1.1" and self.phase != DONE)
        if self.phase == DONE:
            cycle.more_body = False
        elif self.phase == BODY and splicing.CAN_SPLICE and not self.tls:
            extensions[SPLICE_EXTENSION] = splicing.Splicer(self, cycle)
        self.state.start_request(self, cycle)

    # httptools' callbacks (the head only: a Content-Length body never reaches the parser)

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if self._trailers is not None:
            self._trailers.append((name, value))
            return
        self._headers.append((name, value))
        if name == b"content-length":
            if not value.strip().isdigit():
                raise httptools.HttpParserError("invalid Content-Length")
            self._length = int(value)
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
            self._chunked = bool(codings) and codings[-1] == b"chunked"
            if any(c != b"chunked" for c in codings):
                self._codings = True  # one this server cannot decode: 501, as Go answers
        elif name == b"host":
            self._hosts += 1
        elif name == b"connection":
            self._connection += b"," + value
        elif name == b"expect":
            self._expect = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None:
            self.cycle.piece(body)

    def on_message_complete(self) -> None:
        if self.phase == CHUNKED:
            self.framing = None
            self._body_complete()

    def _chunked_body(self, data: bytes) -> bytes:
        framing = self.framing
        assert framing is not None
        try:
            end = framing.scan(data)
        except FramingTooLarge as exc:
            if exc.at:  # the body up to the line or section that is too large
                self.parser.feed_data(data[: exc.at])
            self._reject(431, exc.message, errors.ERR_HEADERS_TOO_LARGE)
            return b""
        if end == len(data):
            self.parser.feed_data(data)
            if framing.lost:  # the parser took a line that could not be followed; it refuses it, or we do
                raise httptools.HttpParserError("malformed chunked body")
            return b""
        self.parser.feed_data(data[:end])
        if self.phase == CHUNKED:  # the framing saw the end, the parser did not
            raise httptools.HttpParserError("malformed chunked body")
        return data[end:]

    def _body_complete(self) -> None:
        self.phase = DONE
        cycle = self.cycle
        if cycle is not None:
            cycle.more_body = False
            cycle.wake()
        self._update_reading()

    # -- errors of the client's framing -----------------------------------------------------------------------------

    def _reject(self, status: int, message: str, error: Any = None) -> None:
        """The bytes cannot be read on: parse nothing more, answer ``status`` and close. When the app has the
        request already, it first reads the body bytes that came before (they are stored, as when a client
        disconnects), then sees the client gone; the answer goes out then, unless the app's own response started."""
        self.phase = CLOSED
        self.framing = None
        cycle = self.cycle
        if cycle is not None and not cycle.complete:
            if cycle.started:
                self.transport.close()
                return
            self.transport.pause_reading()
            self.reading = False
            cycle.failure = (status, message, error)
            cycle.wake()
            return
        self.write_error(status, message, error)

    def write_error(self, status: int, message: str, error: Any = None) -> None:
        """Answer a request the app never saw (or whose body could not be read) with ``status``, and close."""
        if self.transport.is_closing():
            return
        if error is not None:
            body = error(message).body.encode()
            head = b"content-type: text/plain; charset=utf-8\r\ntus-resumable: 1.0.0\r\n"
        else:
            body = f"{status} {reason(status).decode()}: {message}".encode()
            head = b"content-type: text/plain; charset=utf-8\r\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n%scontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason(status), head, len(body), body)
        )
        self._close(lingering=True)

    # -- flow control and timers ------------------------------------------------------------------------------------

    def _update_reading(self) -> None:
        """Read while the app keeps up: pause while a splice owns the socket, while too many body bytes wait for
        the app, and while bytes of a next request wait for this response."""
        transport = self.transport
        if self.phase == CLOSED or transport is None or transport.is_closing():
            return
        cycle = self.cycle
        want = self.splicing is None and not self.excess and (cycle is None or cycle.pending <= HIGH_WATER)
        if want != self.reading:
            self.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _arm_timer(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self.deadline = None
            return
        self.deadline = self.loop.time() + self.options.network_timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        self.deadline = None  # the timer, if one runs, finds no deadline and ends

    def _stop_timers(self) -> None:
        self.deadline = None
        for handle in (self.timer, self.linger):
            if handle is not None:
                handle.cancel()
        self.timer = self.linger = None

    def _on_timer(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:  # re-armed since it was set: wait for the deadline as it is now
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        self.deadline = None
        self._timed_out()

    def _timed_out(self) -> None:
        if self.phase == HEAD and self.cycle is None and not self.transport.is_closing():
            self.transport.close()  # silent between requests, or a head that did not complete in time

    async def drain(self) -> None:
        """Wait while the client does not read what was written. A client that reads nothing for twice the network
        timeout is gone (tusd's write deadline): the connection is dropped, and the request sees a disconnect."""
        if self.write_paused and not self.transport.is_closing():
            if self.drained is None:
                self.drained = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self.drained), 2 * self.options.network_timeout)
            except asyncio.TimeoutError:
                log.info("dropping a connection whose client read nothing for %.0f s", 2 * self.options.network_timeout)
                self.transport.abort()

    # -- the end of a response --------------------------------------------------------------------------------------

    def response_done(self, cycle: Cycle) -> None:
        """The response is on its way: take the next request, or close."""
        if self.cycle is not cycle:
            return
        if self.phase == CLOSED:  # the framing failed meanwhile (the app's answer went out instead): close
            self.cycle = None
            if not self.transport.is_closing() and self.linger is None:
                self.transport.close()
            return
        if not cycle.keep_alive or self.closing or self.phase != DONE or self.splicing is not None:
            self._close(lingering=self.phase != DONE)
            return
        self.cycle = None
        self.phase = HEAD
        self.idle = True
        self._arm_timer()
        data, self.excess = self.excess, b""
        if data:
            self.data_received(data)
        self._update_reading()

    def _close(self, lingering: bool) -> None:
        """Close; with ``lingering`` (the client may still be sending a body), stop writing at once but read and
        drop what comes for a moment first, so that the client reads the response before the connection resets."""
        self.phase = CLOSED
        self.cycle = None
        transport = self.transport
        self._cancel_timer()
        if transport.is_closing():
            return
        if lingering and not self.closing and not self.tls and transport.can_write_eof():
            transport.write_eof()
            if not self.reading:
                self.reading = True
                transport.resume_reading()
            self.linger = self.loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    def shutdown(self) -> None:
        """The server stops: close if idle, else after the current response."""
        self.closing = True
        if self.phase == CLOSED:  # lingering after a response: not worth waiting for
            if self.transport is not None:
                self.transport.close()
        elif self.cycle is None and self.phase == HEAD and self.head_size == 0:
            self._close(lingering=False)


class Cycle(Exchange):
    """One request and its response: the ASGI ``receive`` and ``send`` of the request."""

    __slots__ = ("conn", "pending", "keep_alive", "expect_continue", "chunked", "head", "failure")

    def __init__(self, conn: H1Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        super().__init__(conn.loop, scope)
        self.conn = conn
        self.pending = 0  # bytes in self.body
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.chunked = False
        self.head = b""  # the response head, written with the first body bytes
        self.failure: tuple[int, str, Any] | None = None  # the body's framing failed: answer this once it is read

    def piece(self, data: bytes) -> None:
        if self.complete:
            return  # answered early: the rest of the body is read and dropped
        self.body.append(data)
        self.pending += len(data)
        if self.pending > HIGH_WATER:
            self.conn._update_reading()
        self.wake()

    async def receive(self) -> dict[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if not self.started and not self.disconnected:
                self.conn.transport.write(_CONTINUE)
        while not self.body and self.more_body and not self.disconnected and self.failure is None:
            await self.wait()
        if self.body:
            message = self.take_body()
            self.pending = 0
            self.conn._update_reading()
            return message
        if self.failure is not None:
            (status, text, error), self.failure = self.failure, None
            self.disconnected = True
            self.conn.write_error(status, text, error)
            return {"type": "http.disconnect"}
        return await self.no_body_left()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        conn = self.conn
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise ResponseError("http.response.body before http.response.start, or after the last one")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self.disconnected or conn.transport.is_closing():
                if not more:
                    self.complete = True
                    conn.response_done(self)
                return
            if self.head_only:
                body = b""
            if self.chunked:
                out = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
                if not more:
                    out += b"0\r\n\r\n"
            else:
                out = body
            if self.head:
                out, self.head = self.head + out, b""
            if out:
                conn.transport.write(out)
            if more:
                await conn.drain()
            else:
                self.complete = True
                self.wake()
                await conn.drain()  # a pipelining client that reads nothing gets no further answers meanwhile
                conn.response_done(self)
        elif kind == "http.response.start":
            if self.started:
                raise ResponseError("http.response.start sent twice")
            self._start(message["status"], message.get("headers", ()))
        elif kind == "pytusd.response.informational":
            status = message["status"]
            if self.started or not 100 <= status < 200 or status == 101:
                raise ResponseError(f"an interim response ({status}) after the response started, or not 1xx")
            if self.disconnected or self.scope["http_version"] != "1.1":
                return
            lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
            for name, value in message.get("headers", ()):
                check_header(name, value)
                lines += (name, b": ", value, b"\r\n")
            lines.append(b"\r\n")
            conn.transport.write(b"".join(lines))
        else:
            raise ResponseError(f"unknown message type {kind!r}")

    def _start(self, status: int, headers: Any) -> None:
        conn = self.conn
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
        length = False
        close = not self.keep_alive or conn.closing
        for name, value in headers:
            check_header(name, value)
            lname = name.lower()
            if lname == b"content-length":
                length = True
            elif lname == b"connection":
                if b"close" in value.lower():
                    close = True
                continue  # the server says it itself, below
            elif lname == b"transfer-encoding" or lname == b"date":
                continue  # the server frames the body and dates the response
            lines += (name, b": ", value, b"\r\n")
        lines += (b"date: ", conn.state.date.now(), b"\r\n")
        bodiless = self.head_only or status in _NO_BODY_STATUS or status < 200
        if not length and not bodiless:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # HTTP/1.0: the body ends with the connection
        if conn.phase != DONE:
            close = True  # the rest of the request body will not be read: the connection cannot carry another
        if close:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.started = True
        self.head = b"".join(lines)

    async def run(self, app: Any) -> None:
        exc = await run_app(app, self.scope, self.receive, self.send)
        self.failure = None
        if self.complete:
            return
        conn = self.conn
        if not self.started and not self.disconnected and not conn.transport.is_closing():
            self.keep_alive = False
            self._start(500, [(b"content-type", b"text/plain; charset=utf-8"),
                              (b"content-length", str(len(INTERNAL_ERROR)).encode())])
            await self.send({"type": "http.response.body", "body": INTERNAL_ERROR})
            return
        if exc is None and not self.disconnected:
            log.error("the app returned without completing its response to %s %s", self.scope["method"],
                      self.scope["path"])
        self.complete = True
        conn._close(lingering=False)
