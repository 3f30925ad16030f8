"""Serving a TusApp: uvicorn (httptools + uvloop where installed), graceful shutdown, allocator tuning.

uvicorn was chosen by measurement (reference/performance.md): with glibc's malloc tuned it streams PATCH bodies at
about twice its default speed, close to Node's raw HTTP server, with flat memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import importlib.util
import logging
import os
import re
import signal
import ssl
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from . import errors, workers
from .app import TusApp
from .http import TRAILERS_EXTENSION
from .metrics import Metrics

log = logging.getLogger("pytusd.startup")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit, as Go (so tusd) and Node do at start-up.

    Every open upload holds its connection, its data file and, with the file locker, its lock file: under the usual
    soft limit of 1,024 uploads failed from about 340 open at once with "Too many open files" (bench scenario 3).
    Returns the soft limit now in force (0 where there are no such limits)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    # An infinite hard limit cannot be the soft one (the kernel's nr_open caps it): take a large finite one.
    for want in [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16]:
        if want <= soft:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError):
            continue
    return soft


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds so that every ~256 KB body chunk is not a fresh mmap/munmap pair.

    That page-fault churn halves uvicorn's upload throughput (reference/performance.md). Returns whether the tuning
    was applied (glibc only; a no-op elsewhere).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024) == 1 and ok
    return ok


# What the parser reads of a chunked request body besides its data, bounded as Go's net/http (tusd's server) bounds
# it: there a chunk-size line may take 4 KiB and a trailer section about as much as its 4 KiB read buffer holds (pytusd
# allows a little more). Past a limit the client gets 431 ERR_HEADERS_TOO_LARGE (unless it was answered already) and
# the connection is closed; the body bytes received before are stored, as when a client disconnects.
MAX_CHUNK_LINE_SIZE = 4 * 1024  # one chunk-size line, chunk extensions and line break included
MAX_TRAILER_SIZE = 16 * 1024  # a request's trailer section, every line and line break included
MAX_TRAILER_FIELDS = 64  # the fields of a request's trailer section


@dataclasses.dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    unix_socket: str = ""
    tls_certificate: str = ""
    tls_key: str = ""
    tls_mode: str = "tls12"  # tls12, tls13 or tls12-strong: see apply_tls_mode
    network_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    # Request line and header fields together (Go's http.DefaultMaxHeaderBytes, which tusd serves with); larger
    # requests get 431 ERR_HEADERS_TOO_LARGE and the connection is closed. 0: uvicorn's own (none with httptools).
    max_header_size: int = 1024 * 1024
    # Chunked request bodies (httptools only; see MAX_CHUNK_LINE_SIZE): at least 1 each.
    max_chunk_line_size: int = MAX_CHUNK_LINE_SIZE
    max_trailer_size: int = MAX_TRAILER_SIZE
    max_trailer_fields: int = MAX_TRAILER_FIELDS
    # tusd's -enable-h2c: HTTP/2 over plain TCP (h2c) next to HTTP/1.1; never with TLS.
    enable_h2c: bool = False

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self.tls_certificate else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def framing_limits(self) -> FramingLimits:
        return FramingLimits(self.max_chunk_line_size, self.max_trailer_size, self.max_trailer_fields)


@dataclasses.dataclass(frozen=True)
class FramingLimits:
    """What a chunked request body may carry besides its data (see MAX_CHUNK_LINE_SIZE)."""

    chunk_line_size: int = MAX_CHUNK_LINE_SIZE
    trailer_size: int = MAX_TRAILER_SIZE
    trailer_fields: int = MAX_TRAILER_FIELDS

    def __post_init__(self) -> None:
        if min(self.chunk_line_size, self.trailer_size, self.trailer_fields) < 1:
            raise ValueError("the chunk-line and trailer limits must be at least 1")


class FramingTooLarge(Exception):
    """A chunk-size line or a trailer section went past its limit. ``message`` says which, for the client; ``at`` is
    where that line or section began in the bytes scanned last (0: in earlier ones): the bytes before are sound."""

    def __init__(self, message: str, at: int) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")


class ChunkedFraming:
    """Follows a chunked request body byte for byte, beside httptools, and counts what is not data.

    httptools buffers every trailer field until its line ends, and reads chunk extensions without end, so both must
    be bounded before the parser sees the bytes (as the request head is). :meth:`scan` is given the bytes after the
    request head as they arrive; chunk data is skipped by its length, so only size lines and trailers cost a look.
    Whether the bytes are well-formed is still the parser's to say: a chunk-size line that does not start with a
    hex digit ends the following (:attr:`lost`), and the parser rejects it. :attr:`done`: the body has ended.
    """

    __slots__ = ("limits", "state", "line", "line_size", "left", "trailer_size", "trailer_fields", "lost", "done")

    SIZE_LINE, DATA, DATA_END, TRAILERS = range(4)

    def __init__(self, limits: FramingLimits) -> None:
        self.limits = limits
        self.state = self.SIZE_LINE
        self.line = b""  # the current chunk-size line (bounded by the limit), or the start of a trailer line
        self.line_size = 0  # bytes of the current line so far
        self.left = 0  # data bytes of the current chunk still to come
        self.trailer_size = 0
        self.trailer_fields = 0
        self.lost = False
        self.done = False

    def scan(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to this body: all of them, or fewer when the body ends inside it.
        Raises :class:`FramingTooLarge` as soon as the bytes go past a limit, before the parser could see them."""
        if self.done:
            return 0
        limits = self.limits
        pos, n = 0, len(data)
        start = 0  # where the current chunk line or the trailer section began in data
        while pos < n and not self.lost:
            if self.state == self.DATA:
                take = min(self.left, n - pos)
                self.left -= take
                pos += take
                if not self.left:
                    self.state = self.DATA_END
                continue
            if self.state != self.TRAILERS and not self.line_size:
                start = pos
            eol = data.find(b"\n", pos)
            end = n if eol < 0 else eol + 1
            self.line_size += end - pos
            if self.state == self.TRAILERS:
                self.trailer_size += end - pos
                if self.trailer_size > limits.trailer_size:
                    raise FramingTooLarge(self._trailer_message(), start)
                if len(self.line) < 2:
                    self.line += data[pos : min(end, pos + 2)]
            else:
                if self.line_size > limits.chunk_line_size:
                    raise FramingTooLarge(
                        f"a chunk-size line (with its chunk extensions) may take {limits.chunk_line_size} bytes at "
                        "most", start
                    )
                if self.state == self.SIZE_LINE:
                    self.line += data[pos:end]
            pos = end
            if eol < 0:
                break
            state = self.state
            if self._line_ended():
                self.done = True
                return pos
            if self.trailer_fields > limits.trailer_fields:
                raise FramingTooLarge(self._trailer_message(), start)
            if self.state == self.TRAILERS and state != self.TRAILERS:
                start = pos
        return n

    def _trailer_message(self) -> str:
        limits = self.limits
        return f"the trailer section may take {limits.trailer_size} bytes and {limits.trailer_fields} fields at most"

    def _line_ended(self) -> bool:
        """A line is complete: move on. True when it was the blank line that ends the trailer section."""
        state, line = self.state, self.line
        self.line, self.line_size = b"", 0
        if state == self.SIZE_LINE:
            match = _CHUNK_SIZE.match(line)
            if match is None:
                self.lost = True  # not a chunk-size line: the parser rejects it
                return False
            self.left = int(match.group(), 16)
            self.state = self.DATA if self.left else self.TRAILERS
        elif state == self.DATA_END:
            self.state = self.SIZE_LINE
        elif line in (b"\r\n", b"\n"):
            return True
        else:
            self.trailer_fields += 1
        return False


def _is_chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the parser reads the request body as chunked: the last transfer coding named is ``chunked``."""
    codings = b",".join(value for name, value in headers if name == b"transfer-encoding")
    return bool(codings) and codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def _idle_timeout_protocol(
    base: type, metrics: Metrics | None = None, max_header_size: int = 0, framing: FramingLimits = FramingLimits()
) -> type:
    """uvicorn's HTTP protocol, also closing connections that stay silent before (or while) sending headers.

    uvicorn times out idle keep-alive connections only after a first response; a connection that never sends a
    complete request would otherwise stay open forever. Here a request's head (request line and header fields) must
    be complete within the network timeout of the connection's start, or of its first byte after a response: bytes
    trickling in do not extend it (tusd's ReadHeaderTimeout; slowloris). Bodies are timed by the app
    (``RequestBody``). With ``metrics``, open connections are counted in ``tusd_connections_open`` (as tusd counts
    them).
    """

    class IdleTimeoutProtocol(base):  # type: ignore[valid-type,misc]
        _trailers: list[tuple[bytes, bytes]] | None = None
        _counted = False
        _head_timer: asyncio.TimerHandle | None = None  # the deadline of the request head being received

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            if metrics is not None:
                metrics.connection_opened()
                self._counted = True
            super().connection_made(transport)
            self._arm_head_deadline()

        def connection_lost(self, exc):  # type: ignore[no-untyped-def]
            self._cancel_head_deadline()
            if self._counted:
                self._counted = False
                metrics.connection_closed()  # type: ignore[union-attr]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is None or self.cycle.response_complete:
                if self._head_timer is None:  # the first bytes of a request head: its deadline starts now, once
                    self._arm_head_deadline()
            else:
                self._cancel_head_deadline()

        def _arm_head_deadline(self) -> None:
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_deadline_passed)

        def _cancel_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_deadline_passed(self) -> None:
            self._head_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    if hasattr(base, "on_header"):  # httptools: the parser reports trailer fields like header fields
        from .fastbody import request_content_length

        class TrailerProtocol(IdleTimeoutProtocol):
            """Hands request trailers to the app as ``scope["extensions"][TRAILERS_EXTENSION]`` (a list of
            (name, value) pairs, filled once the body has been read), for the checksum-trailer extension.

            Also bounds what httptools would buffer or read without end, counting the bytes before the parser sees
            them: a request's head (past ``max_header_size`` the client gets 431) and, of a chunked body, each
            chunk-size line and the trailer section (``framing``; :class:`ChunkedFraming`). Incoming bytes are split
            where a head ends and where a chunked body ends, so each part is counted against its own limit."""

            _in_head = True  # the bytes arriving belong to a request line or header fields
            _head_bytes = 0
            _head_tail = b""  # the last bytes of the head so far, to find a blank line split between reads
            _head_ends_here = False  # the parser is being fed up to the end of a head, and no further
            _framing: ChunkedFraming | None = None  # following a chunked request body
            _body_left = 0  # bytes still to come of a body with a Content-Length
            _discarding = False  # past a limit: nothing more is parsed on this connection

            def data_received(self, data: bytes) -> None:
                while data and not self._discarding:
                    if self._framing is not None:  # a chunked body
                        framing = self._framing
                        try:
                            end = framing.scan(data)
                        except FramingTooLarge as exc:
                            if exc.at:  # the body up to the line or section that is too large
                                super().data_received(data[: exc.at])
                            self._reject_large_framing(exc.message)
                            return
                        if end == len(data):
                            super().data_received(data)
                            if framing.lost and not self.transport.is_closing():
                                self.transport.close()  # the parser took a line that could not be followed
                            return
                        super().data_received(data[:end])  # the body ends here: a pipelined request follows
                        if self._framing is not None:  # the parser did not end the request there: stop
                            self._discarding = True
                            self.transport.close()
                            return
                        data = data[end:]
                    elif self._body_left:  # a body of known length
                        end = min(self._body_left, len(data))
                        self._body_left -= end
                        if end == len(data):
                            super().data_received(data)
                            return
                        super().data_received(data[:end])
                        data = data[end:]
                    elif not self._in_head:  # a body that is not followed (odd framing the parser will judge)
                        super().data_received(data)
                        return
                    else:
                        end = _find_head_end(self._head_tail, data)
                        size = len(data) if end < 0 else end
                        if max_header_size and self._head_bytes + size > max_header_size:
                            self._reject_large_head()
                            return
                        self._head_bytes += size
                        self._head_tail = (self._head_tail + data[max(0, size - 3) : size])[-3:]
                        self._feed_head(data[:end] if 0 <= end < len(data) else data, ends=end >= 0)
                        if end < 0:
                            return
                        data = data[end:]
                        if self._in_head:  # blank lines before a request line, which the parser skips
                            self._head_tail = b""
                    if self.transport.is_closing():
                        return

            def _feed_head(self, data: bytes, ends: bool) -> None:
                """Feed the parser bytes of a request head; ``ends``: the head ends with them, exactly."""
                self._head_ends_here = ends
                try:
                    super().data_received(data)
                finally:
                    self._head_ends_here = False

            def _reject_large_head(self) -> None:
                self._in_head = False
                self._discarding = True
                if self.transport.is_closing():
                    return
                if self.cycle is None or self.cycle.response_complete:  # else a response is under way: just close
                    self._write_431(f"the request line and header fields may take {max_header_size} bytes at most")
                self.transport.close()

            def _write_431(self, message: str) -> None:
                body = errors.ERR_HEADERS_TOO_LARGE(message).body.encode()
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-type: text/plain; charset=utf-8\r\ntus-resumable: 1.0.0\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )

            def _reject_large_framing(self, message: str) -> None:
                """A chunk-size line or the trailer section is too large: parse nothing more, and close once the
                app has taken the body bytes already received (they are stored, as when the client disconnects)."""
                self._discarding = True
                self._framing = None
                self.transport.pause_reading()
                self._close_when_body_taken(message, self.loop.time() + self.timeout_keep_alive)

            def _close_when_body_taken(self, message: str, deadline: float) -> None:
                cycle = self.cycle
                if self.transport.is_closing():
                    return
                if cycle is None or cycle.response_started:  # answered (or answering) already: just close
                    self.transport.close()
                    return
                if len(cycle.body) and not cycle.disconnected and self.loop.time() < deadline:
                    self.loop.call_later(0.01, self._close_when_body_taken, message, deadline)
                    return
                self._write_431(message)
                # From here the app reads the end of its body and its own response goes nowhere, as after a
                # disconnect (uvicorn marks the request so too, once the transport reports the connection lost).
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.close()

            def on_message_begin(self) -> None:
                self._trailers = None
                super().on_message_begin()

            def on_message_complete(self) -> None:
                super().on_message_complete()
                self._in_head, self._head_bytes, self._head_tail = True, 0, b""
                self._body_left, self._framing = 0, None

            def on_header(self, name: bytes, value: bytes) -> None:
                if self._trailers is not None:
                    self._trailers.append((name.lower(), value))
                else:
                    super().on_header(name, value)

            def on_headers_complete(self) -> None:
                self._in_head, self._head_bytes, self._head_tail = False, 0, b""
                super().on_headers_complete()
                self._trailers = []
                self.scope.setdefault("extensions", {})[TRAILERS_EXTENSION] = self._trailers
                if self.parser.should_upgrade():
                    return
                if _is_chunked(self.headers):
                    if self._head_ends_here:
                        self._framing = ChunkedFraming(framing)
                    else:  # the head ended elsewhere than where it was looked for: the body cannot be followed
                        self._discarding = True
                        self.transport.close()
                elif self._head_ends_here:
                    self._body_left = request_content_length(self.headers) or 0

            def on_chunk_header(self) -> None:
                if self._framing is None and not self._discarding:  # a chunked body not being followed
                    self._discarding = True
                    self.transport.close()

        TrailerProtocol.__name__ = f"Trailer{base.__name__}"
        return TrailerProtocol
    IdleTimeoutProtocol.__name__ = f"IdleTimeout{base.__name__}"
    return IdleTimeoutProtocol


def _head_end(data: bytes) -> int:
    """Where a request head ends in ``data`` (just past its blank line), or -1."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := data.find(mark)) >= 0]
    return min(ends, default=-1)


def _find_head_end(tail: bytes, data: bytes) -> int:
    """Where a request head ends in ``data``, its blank line maybe begun in ``tail`` (the head's last bytes before
    ``data``), or -1. Only the first bytes of ``data`` are copied to look across the boundary."""
    if tail:
        end = _head_end(tail + data[:3]) - len(tail)
        if end > 0:
            return end
    return _head_end(data)


def _http_protocol(
    metrics: Metrics | None = None, max_header_size: int = 0, framing: FramingLimits = FramingLimits()
) -> type:
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        from .fastbody import fast_body_protocol  # request bodies without uvicorn's copies

        return fast_body_protocol(_idle_timeout_protocol(HttpToolsProtocol, metrics, max_header_size, framing))
    from uvicorn.protocols.http.h11_impl import H11Protocol

    # h11 limits the head itself (h11_max_incomplete_event_size below) and answers 400, and trailers with it.
    return _idle_timeout_protocol(H11Protocol, metrics)


class _Server(uvicorn.Server):
    """uvicorn's server, told to end open uploads gracefully on the first signal and to quit on the second."""

    def __init__(
        self, config: uvicorn.Config, app: TusApp, banner: str, worker: workers.Worker | None = None,
        upload_line: Callable[[list[Any]], str] | None = None,
    ) -> None:
        super().__init__(config)
        self.tus_app = app
        self.banner = banner
        self.upload_line = upload_line  # the line for the listening addresses (cli.upload_line), logged last
        self.worker = worker  # under --workers: this process's place; the connections come from the parent
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        if self.started:
            if self.banner:
                log.info("%s", self.banner)
            if self.upload_line is not None:
                listening = [sock.getsockname() for server in self.servers for sock in server.sockets or ()]
                if line := self.upload_line(listening):
                    log.info("%s", line)
            if self.worker is not None:
                self.worker.ready(self)  # connections come from the --workers parent from now on

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        if self.worker is None:
            await super().serve(sockets)
            return
        # The --workers parent asks for a graceful stop with GRACEFUL_SIGNAL, which counts once: a SIGTERM that
        # reached this worker directly as well (systemd, Ctrl-C) must not turn it into "quit at once".
        previous = signal.signal(workers.GRACEFUL_SIGNAL, self._graceful_stop)
        try:
            await super().serve(sockets)
        finally:
            signal.signal(workers.GRACEFUL_SIGNAL, previous)

    def _graceful_stop(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self.handle_exit(signal.SIGTERM, frame)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        log.info("shutting down (signal %s); open uploads store what they have", signal.Signals(sig).name)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.tus_app.shutdown)
        super().handle_exit(sig, frame)


def apply_tls_mode(context: ssl.SSLContext, mode: str) -> None:
    """tusd's --tls-mode on a server context (cmd/tusd/cli/serve.go), the same versions and cipher suites:

    - ``tls12`` (default): TLS 1.2 and 1.3; for TLS 1.2 only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305
      (Mozilla's "intermediate" list); TLS 1.3 suites are all AEAD;
    - ``tls13``: TLS 1.3 only;
    - ``tls12-strong``: TLS 1.2 only, ECDHE with AES-256-GCM only.

    Older versions (TLS 1.0, 1.1, SSL) are refused in every mode.
    """
    if mode == "tls13":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    elif mode == "tls12":
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    elif mode == "tls12-strong":
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
    else:
        raise ValueError(f"unknown TLS mode {mode!r}: use tls12, tls13 or tls12-strong")
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def serve(
    app: TusApp, options: ServeOptions, banner: str, upload_line: Callable[[list[Any]], str] | None = None
) -> None:
    """Run ``app`` until SIGINT or SIGTERM; log ``banner`` (unless empty) once the socket listens, then the line
    ``upload_line`` makes of the listening addresses (``getsockname()`` of each socket), unless empty."""
    raise_open_files_limit()
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        uds=options.unix_socket or None,
        loop="uvloop" if has_uvloop else "asyncio",
        http=_http_protocol(app.metrics, options.max_header_size, options.framing_limits),
        h11_max_incomplete_event_size=options.max_header_size or None,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=max(1, int(options.network_timeout)),
        timeout_graceful_shutdown=max(1, int(round(options.shutdown_timeout))),
        ssl_certfile=options.tls_certificate or None,
        ssl_keyfile=options.tls_key or None,
        backlog=4096,
    )
    if options.tls_certificate:
        config.load()  # builds config.ssl (uvicorn would do it in run()), which --tls-mode then restricts
        assert config.ssl is not None
        apply_tls_mode(config.ssl, options.tls_mode)
    app.metrics.server_counts_connections = True  # connections, not requests, in tusd_connections_open
    worker = workers.current()
    if worker is not None and banner:
        banner += f" [worker {worker.index + 1}/{worker.count}, pid {os.getpid()}]"
    server = _Server(config, app, banner, worker, upload_line)
    try:
        server.run(sockets=worker.sockets if worker is not None else None)
    finally:
        app.metrics.process_exited()
    if server.force_exit:
        os._exit(1)
