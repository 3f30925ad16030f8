"""HTTP/2 on the ``h2`` library: over TLS when ALPN chooses ``h2`` (as Go's server offers it), and in cleartext
(h2c) with prior knowledge under ``--enable-h2c`` (tusd's ``-enable-h2c``; like Go, no ``Upgrade: h2c``).

Every stream is one ASGI request, run concurrently with the connection's other streams. Flow control is per stream:
the connection's window is handed back as soon as data arrives, a stream's only as the app reads its body, so a
stream whose store is slow fills its own window (STREAM_WINDOW) and never holds up another stream; what a connection
buffers is bounded by MAX_STREAMS x STREAM_WINDOW. Request trailers reach the app as on HTTP/1.1
(``scope["extensions"][TRAILERS_EXTENSION]``), and interim responses (104) go out as informational HEADERS frames.
Request bodies are not spliced (the bytes arrive framed): they stream into the store chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..core.http import INFORMATIONAL_EXTENSION, TRAILERS_EXTENSION
from .asgi import (
    INTERNAL_ERROR,
    Exchange,
    ResponseError,
    check_header,
    make_scope,
    peer,
    resolve,
    run_app,
    split_target,
)

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # pragma: no cover - h2 is a dependency; without it the server speaks HTTP/1.1 only
    h2 = None  # type: ignore[assignment]  # the module's stand-in when h2 is missing: available() says so

log = logging.getLogger("pytusd.server")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STREAM_WINDOW = 256 * 1024  # body bytes a stream may have in flight (unread by the app)
MAX_STREAMS = 100  # concurrent streams per connection (Go's server allows 250; memory is window x streams)
CONNECTION_WINDOW = 16 * 1024 * 1024  # handed back on arrival, so only stream windows throttle
REFUSED_LIMIT = 10 * MAX_STREAMS  # streams refused on one connection before it is closed as abusive
# Bytes written and not yet read by the client, past which it is cut off: a stream writes one frame and waits for
# the client to read it, so legitimate answers stay far below (100 streams x its 64 KiB default stream window).
MAX_UNREAD = 8 * 1024 * 1024
SLICE = 64 * 1024  # bytes handed to h2 per turn of the event loop, at most
CONTROL_RATE = 1000  # PING and SETTINGS frames a second a client may send
# Connection-specific fields HTTP/2 forbids (RFC 9113 section 8.2.2): dropped from the app's response headers.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


def available() -> bool:
    return h2 is not None


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection, taken over from the HTTP/1.1 protocol that accepted it (:meth:`take_over`)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.options = state.options
        self.loop: asyncio.AbstractEventLoop = state.loop
        self.transport: Any = None
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self.closing = False
        self.refused = 0  # streams refused because MAX_STREAMS requests were still running
        self.backlog: list[bytes] = []  # bytes read but not yet given to h2 (see data_received)
        self.backlog_scheduled = False
        self.control_since = 0.0  # PING/SETTINGS frames counted since then (see _control_frame)
        self.control_count = 0
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.scheme = "http"
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None

    # -- the connection ---------------------------------------------------------------------------------------------

    def take_over(self, transport: Any, data: bytes = b"") -> None:
        """Start on ``transport`` (accepted by the HTTP/1.1 protocol), with ``data`` already read from it."""
        self.transport = transport
        tls = transport.get_extra_info("ssl_object") is not None
        self.scheme = "https" if tls else "http"
        self.client = peer(transport, "peername")
        self.server = peer(transport, "sockname")
        settings = {
            # Until the client has our SETTINGS it may open more streams than we allow: h2 would take one more
            # for a connection error, so its own limit starts high, and the streams past MAX_STREAMS running are
            # refused one by one (_request), as Go refuses them.
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        }
        if self.options.max_header_size:
            settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = self.options.max_header_size
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        if self.options.max_header_size:  # the header-list limit is the decoder's, set from settings on their ACK
            self.h2.decoder.max_header_list_size = self.options.max_header_size
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self._arm_idle()
        if data:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle()
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        resolve(self.drained)
        self.state.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        resolve(self.drained)
        self.drained = None

    async def drain(self) -> None:
        """Wait while the client does not read; one that reads nothing for twice the network timeout is gone
        (tusd's write deadline): the connection is dropped."""
        if self.write_paused and not self.closed:
            if self.drained is None:
                self.drained = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self.drained), 2 * self.options.network_timeout)
            except asyncio.TimeoutError:
                log.info("dropping an HTTP/2 connection whose client read nothing for %.0f s",
                         2 * self.options.network_timeout)
                self.transport.abort()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed and not self.transport.is_closing():
            self.transport.write(data)
            if self.write_paused and self.transport.get_write_buffer_size() > MAX_UNREAD:
                # Frames pile up for a client that does not read them (control frames answered without being
                # asked for, a PING flood): cut it off, as Go does past its queue of control frames.
                self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """Bytes from the client, taken SLICE bytes at a time: past a slice the connection stops reading and goes
        on at the loop's next turn, so that one connection's flood of small frames (PING, SETTINGS) does not keep
        the loop from every other connection."""
        if self.closed:
            return
        if len(data) > SLICE:
            data, rest = data[:SLICE], data[SLICE:]
            self.backlog.append(rest)
            if not self.backlog_scheduled:
                self.backlog_scheduled = True
                self.transport.pause_reading()
                self.loop.call_soon(self._take_backlog)
        self._receive(data)

    def _take_backlog(self) -> None:
        self.backlog_scheduled = False
        if self.closed or not self.backlog:
            self.backlog.clear()
            return
        data = self.backlog.pop(0)
        if len(data) > SLICE:
            self.backlog.insert(0, data[SLICE:])
            data = data[:SLICE]
        self._receive(data)
        if self.closed:
            return
        if self.backlog:
            self.backlog_scheduled = True
            self.loop.call_soon(self._take_backlog)
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # h2 has queued a GOAWAY saying why
            log.debug("HTTP/2 protocol error from %s: %s", self.client, exc)
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.ended()
            elif isinstance(event, h2.events.TrailersReceived):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.trailers.extend((bytes(n).lower(), bytes(v)) for n, v in event.headers or ())
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.gone()  # it keeps its place in self.streams until its app task is done
            elif isinstance(event, h2.events.WindowUpdated):
                self._window_opened(event.stream_id or 0)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._window_opened(0)  # the initial window may have grown
                self._control_frame()
            elif isinstance(event, h2.events.PingReceived):
                self._control_frame()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.flush()
                self.transport.close()
                return
        self.flush()

    def _control_frame(self) -> None:
        """PING and SETTINGS cost an answer each: more than CONTROL_RATE a second is a flood (CVE-2019-9512,
        -9515); the connection is closed with ENHANCE_YOUR_CALM."""
        now = self.loop.time()
        if now - self.control_since > 1.0:
            self.control_since, self.control_count = now, 0
        self.control_count += 1
        if self.control_count > CONTROL_RATE and not self.closed:
            log.info("closing an HTTP/2 connection that sent more than %d PING/SETTINGS frames in a second",
                     CONTROL_RATE)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self.flush()
            self.transport.close()
            self.closed = True

    def _request(self, event: Any) -> None:
        self._cancel_idle()
        if len(self.streams) >= MAX_STREAMS or self.closing:
            # Streams the client reset are not counted by h2 any more, but their requests may still run: a
            # client that opens and resets streams without end (rapid reset, CVE-2023-44487) gets no more
            # running requests than MAX_STREAMS, and the rest are refused (the client may retry them).
            self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.refused += 1
            if self.refused > REFUSED_LIMIT:
                self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                self.flush()
                self.transport.close()
            return
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        for name, value in event.headers:
            name, value = bytes(name), bytes(value)
            if name[:1] == b":":
                pseudo[name] = value
            else:
                headers.append((name, value))
        method = pseudo.get(b":method", b"GET").decode("latin-1")
        target = split_target(pseudo.get(b":path", b"")) if method != "CONNECT" else None
        if target is None:
            self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        authority = pseudo.get(b":authority")
        if authority is not None and not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", authority))
        trailers: list[tuple[bytes, bytes]] = []
        scope = make_scope(
            http_version="2", method=method, raw_path=target[0], query=target[1], headers=headers,
            scheme=self.scheme, server=self.server, client=self.client, state=self.state.app_state,
            counts_connections=self.state.metrics is not None,
            extensions={TRAILERS_EXTENSION: trailers, INFORMATIONAL_EXTENSION: True},
        )
        stream = Stream(self, event.stream_id, scope, trailers)
        self.streams[event.stream_id] = stream
        if event.stream_ended is not None:
            stream.more_body = False
        elif any(name == b"expect" and value.strip().lower() == b"100-continue" for name, value in headers):
            stream.expect_continue = True
        self.state.start_request(self, stream)

    def _data(self, event: Any) -> None:
        if event.flow_controlled_length:
            # the connection's window, at once (not once the client said GOAWAY: h2 is closed then, and refuses)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(event.flow_controlled_length)
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.piece(bytes(event.data), event.flow_controlled_length)

    def consumed(self, stream: Stream, size: int) -> None:
        """The app read ``size`` flow-controlled bytes of ``stream``: the client may send as much again."""
        if size and not self.closed and stream.more_body:
            try:
                self.h2.increment_flow_control_window(size, stream.stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            self.flush()

    def _window_opened(self, stream_id: int) -> None:
        streams = self.streams.values() if stream_id == 0 else [self.streams.get(stream_id)]
        for stream in list(streams):
            if stream is not None:
                stream.window_opened()

    def stream_done(self, stream: Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            if self.closing:
                self._goaway()
            else:
                self._arm_idle()

    def _goaway(self) -> None:
        if not self.closed:
            self.h2.close_connection(last_stream_id=self.h2.highest_inbound_stream_id)
            self.flush()
            self.transport.close()

    # -- timers and shutdown ----------------------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self.timer = self.loop.call_later(self.options.network_timeout, self._idle_passed)

    def _cancel_idle(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle_passed(self) -> None:
        self.timer = None
        if not self.streams and not self.closed:
            self.h2.close_connection()
            self.flush()
            self.transport.close()

    def shutdown(self) -> None:
        """The server stops: the streams begun go on and get their answers (503 for open uploads); new ones are
        refused; once none is left, GOAWAY and close. (h2 takes no frame on any stream after its GOAWAY, so it goes
        last.)"""
        if self.closing or self.closed:
            return
        self.closing = True
        if not self.streams:
            self._goaway()


class Stream(Exchange):
    """One request on an HTTP/2 connection: its ASGI ``receive`` and ``send``."""

    __slots__ = ("conn", "stream_id", "trailers", "sizes", "headers", "window", "expect_continue")

    def __init__(self, conn: H2Connection, stream_id: int, scope: dict[str, Any],
                 trailers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(conn.loop, scope)
        self.conn = conn
        self.stream_id = stream_id
        self.trailers = trailers
        self.sizes = 0  # flow-controlled bytes of ``body`` (padding included), handed back once read
        self.headers: list[tuple[bytes, bytes]] | None = None  # the response's, sent with the first data
        self.window: asyncio.Future[None] | None = None  # waiting for the client's flow-control window
        self.expect_continue = False  # the client waits for 100 Continue before it sends the body

    def piece(self, data: bytes, size: int) -> None:
        if self.complete:
            self.conn.consumed(self, size)  # answered already: dropped, but the window must not shrink for good
            return
        if data:
            self.body.append(data)
        self.sizes += size
        self.wake()

    def ended(self) -> None:
        self.more_body = False
        self.wake()

    def gone(self) -> None:
        self.disconnected = True
        self.wake()
        self.window_opened()

    def window_opened(self) -> None:
        window, self.window = self.window, None
        resolve(window)

    async def receive(self) -> dict[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if not self.started:
                await self.send({"type": "pytusd.response.informational", "status": 100, "headers": []})
        while not self.body and self.more_body and not self.disconnected:
            await self.wait()
        size, self.sizes = self.sizes, 0
        self.conn.consumed(self, size)  # the client may send as much again (padding-only frames included)
        if self.body:
            return self.take_body()
        return await self.no_body_left()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        conn = self.conn
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise ResponseError("http.response.body before http.response.start, or after the last one")
            body = b"" if self.head_only else message.get("body", b"")
            more = message.get("more_body", False)
            if not more:
                self.complete = True
            if self.disconnected or conn.closed:
                if not more:
                    self._done()
                return
            try:
                if self.headers is not None:
                    headers, self.headers = self.headers, None
                    conn.h2.send_headers(self.stream_id, headers, end_stream=not body and not more)
                    conn.flush()
                elif not body and not more:
                    conn.h2.end_stream(self.stream_id)
                    conn.flush()
                if body:
                    await self._send_data(body, end=not more)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.disconnected = True
            if more:
                await conn.drain()
            else:
                self._done()
        elif kind == "http.response.start":
            if self.started:
                raise ResponseError("http.response.start sent twice")
            self.started = True
            headers = [(b":status", str(message["status"]).encode())]
            for name, value in message.get("headers", ()):
                check_header(name, value)
                name = name.lower()
                if name not in _HOP_BY_HOP and name != b"date":
                    headers.append((name, value))
            headers.append((b"date", conn.state.date.now()))
            self.headers = headers
        elif kind == "pytusd.response.informational":
            status = message["status"]
            if self.started or not 100 <= status < 200 or status == 101:
                raise ResponseError(f"an interim response ({status}) after the response started, or not 1xx")
            if self.disconnected or conn.closed:
                return
            headers = [(b":status", str(status).encode())]
            for name, value in message.get("headers", ()):
                check_header(name, value)
                headers.append((name.lower(), value))
            try:
                conn.h2.send_headers(self.stream_id, headers)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.disconnected = True
                return
            conn.flush()
        else:
            raise ResponseError(f"unknown message type {kind!r}")

    async def _send_data(self, body: bytes, end: bool) -> None:
        conn = self.conn
        view = memoryview(body)
        while view:
            if self.disconnected or conn.closed:
                return
            window = conn.h2.local_flow_control_window(self.stream_id)
            size = min(window, conn.h2.max_outbound_frame_size, len(view))
            if size <= 0:
                self.window = window_opened = conn.loop.create_future()
                try:
                    await asyncio.wait_for(window_opened, 2 * conn.options.network_timeout)
                except asyncio.TimeoutError:  # the client keeps its window shut: as gone (tusd's write deadline)
                    self.disconnected = True
                    with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                        conn.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
                        conn.flush()
                    return
                continue
            conn.h2.send_data(self.stream_id, view[:size], end_stream=end and size == len(view))
            view = view[size:]
            conn.flush()
            await conn.drain()

    def _done(self) -> None:
        if self.more_body and not self.disconnected and not self.conn.closed:
            # Answered before the body was read: the rest of it is not wanted (RFC 9113 section 8.1).
            try:
                self.conn.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self.conn.flush()
        self.wake()
        self.conn.stream_done(self)

    async def run(self, app: Any) -> None:
        exc = await run_app(app, self.scope, self.receive, self.send)
        if self.complete:
            return
        if not self.started and not self.disconnected:
            await self.send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(INTERNAL_ERROR)).encode())]})
            await self.send({"type": "http.response.body", "body": INTERNAL_ERROR})
            return
        if exc is None and not self.disconnected:
            log.error("the app returned without completing its response to %s %s", self.scope["method"],
                      self.scope["path"])
        self.complete = True
        if not self.disconnected and not self.conn.closed:
            try:
                self.conn.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self.conn.flush()
        self._done()
