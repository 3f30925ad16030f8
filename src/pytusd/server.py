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
import signal
import ssl
from types import FrameType

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

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self.tls_certificate else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _idle_timeout_protocol(base: type, metrics: Metrics | None = None, max_header_size: int = 0) -> type:
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

        class TrailerProtocol(IdleTimeoutProtocol):
            """Hands request trailers to the app as ``scope["extensions"][TRAILERS_EXTENSION]`` (a list of
            (name, value) pairs, filled once the body has been read), for the checksum-trailer extension.

            Also limits a request's head: httptools buffers header fields without any limit, so the bytes of a head
            are counted before the parser sees them, and past ``max_header_size`` the client gets 431."""

            _in_head = True  # the bytes arriving belong to a request line or header fields
            _head_bytes = 0
            _head_tail = b""  # the last bytes of the head so far, to find a blank line split between reads

            def data_received(self, data: bytes) -> None:
                if self._in_head and max_header_size:
                    seen = self._head_bytes
                    if seen + len(data) > max_header_size:
                        # Too much unless the head ends in this read, early enough (a body may follow it).
                        end = _head_end(self._head_tail + data) - len(self._head_tail)
                        if end < 0 or seen + end > max_header_size:
                            self._reject_large_head()
                            return
                    self._head_bytes = seen + len(data)
                    self._head_tail = (self._head_tail + data)[-3:]
                super().data_received(data)

            def _reject_large_head(self) -> None:
                self._in_head = False
                if self.transport.is_closing():
                    return
                if self.cycle is None or self.cycle.response_complete:  # else a response is under way: just close
                    body = errors.ERR_HEADERS_TOO_LARGE(
                        f"the request line and header fields may take {max_header_size} bytes at most"
                    ).body.encode()
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        b"content-type: text/plain; charset=utf-8\r\ntus-resumable: 1.0.0\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                    )
                self.transport.close()

            def on_message_begin(self) -> None:
                self._trailers = None
                super().on_message_begin()

            def on_message_complete(self) -> None:
                super().on_message_complete()
                self._in_head, self._head_bytes, self._head_tail = True, 0, b""

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

        TrailerProtocol.__name__ = f"Trailer{base.__name__}"
        return TrailerProtocol
    IdleTimeoutProtocol.__name__ = f"IdleTimeout{base.__name__}"
    return IdleTimeoutProtocol


def _head_end(data: bytes) -> int:
    """Where a request head ends in ``data`` (just past its blank line), or -1."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := data.find(mark)) >= 0]
    return min(ends, default=-1)


def _http_protocol(metrics: Metrics | None = None, max_header_size: int = 0) -> type:
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        from .fastbody import fast_body_protocol  # request bodies without uvicorn's copies

        return fast_body_protocol(_idle_timeout_protocol(HttpToolsProtocol, metrics, max_header_size))
    from uvicorn.protocols.http.h11_impl import H11Protocol

    # h11 limits the head itself (h11_max_incomplete_event_size below) and answers 400.
    return _idle_timeout_protocol(H11Protocol, metrics)


class _Server(uvicorn.Server):
    """uvicorn's server, told to end open uploads gracefully on the first signal and to quit on the second."""

    def __init__(self, config: uvicorn.Config, app: TusApp, banner: str, worker: workers.Worker | None = None) -> None:
        super().__init__(config)
        self.tus_app = app
        self.banner = banner
        self.worker = worker  # under --workers: this process's place; the connections come from the parent
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        if self.started:
            log.info("%s", self.banner)
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


def serve(app: TusApp, options: ServeOptions, banner: str) -> None:
    """Run ``app`` until SIGINT or SIGTERM; log ``banner`` once the socket listens."""
    raise_open_files_limit()
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        uds=options.unix_socket or None,
        loop="uvloop" if has_uvloop else "asyncio",
        http=_http_protocol(app.metrics, options.max_header_size),
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
    if worker is not None:
        banner += f" [worker {worker.index + 1}/{worker.count}, pid {os.getpid()}]"
    server = _Server(config, app, banner, worker)
    try:
        server.run(sockets=worker.sockets if worker is not None else None)
    finally:
        app.metrics.process_exited()
    if server.force_exit:
        os._exit(1)
