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
from types import FrameType

import uvicorn

from .app import TusApp
from .http import TRAILERS_EXTENSION
from .metrics import Metrics

log = logging.getLogger("pytusd.startup")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


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
    network_timeout: float = 60.0
    shutdown_timeout: float = 10.0

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self.tls_certificate else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _idle_timeout_protocol(base: type, metrics: Metrics | None = None) -> type:
    """uvicorn's HTTP protocol, also closing connections that stay silent before (or while) sending headers.

    uvicorn times out idle keep-alive connections only after a first response; a connection that never sends a
    complete request would otherwise stay open forever. Bodies are timed by the app (``RequestBody``). With
    ``metrics``, open connections are counted in ``tusd_connections_open`` (as tusd counts them).
    """

    class IdleTimeoutProtocol(base):  # type: ignore[valid-type,misc]
        _trailers: list[tuple[bytes, bytes]] | None = None
        _counted = False

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            if metrics is not None:
                metrics.connection_opened()
                self._counted = True
            super().connection_made(transport)
            self._arm_idle_timeout()

        def connection_lost(self, exc):  # type: ignore[no-untyped-def]
            if self._counted:
                self._counted = False
                metrics.connection_closed()  # type: ignore[union-attr]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is None or self.cycle.response_complete:
                self._arm_idle_timeout()

        def _arm_idle_timeout(self) -> None:
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    if hasattr(base, "on_header"):  # httptools: the parser reports trailer fields like header fields

        class TrailerProtocol(IdleTimeoutProtocol):
            """Hands request trailers to the app as ``scope["extensions"][TRAILERS_EXTENSION]`` (a list of
            (name, value) pairs, filled once the body has been read), for the checksum-trailer extension."""

            def on_message_begin(self) -> None:
                self._trailers = None
                super().on_message_begin()

            def on_header(self, name: bytes, value: bytes) -> None:
                if self._trailers is not None:
                    self._trailers.append((name.lower(), value))
                else:
                    super().on_header(name, value)

            def on_headers_complete(self) -> None:
                super().on_headers_complete()
                self._trailers = []
                self.scope.setdefault("extensions", {})[TRAILERS_EXTENSION] = self._trailers

        TrailerProtocol.__name__ = f"Trailer{base.__name__}"
        return TrailerProtocol
    IdleTimeoutProtocol.__name__ = f"IdleTimeout{base.__name__}"
    return IdleTimeoutProtocol


def _http_protocol(metrics: Metrics | None = None) -> type:
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return _idle_timeout_protocol(HttpToolsProtocol, metrics)
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return _idle_timeout_protocol(H11Protocol, metrics)


class _Server(uvicorn.Server):
    """uvicorn's server, told to end open uploads gracefully on the first signal and to quit on the second."""

    def __init__(self, config: uvicorn.Config, app: TusApp, banner: str) -> None:
        super().__init__(config)
        self.tus_app = app
        self.banner = banner
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        if self.started:
            log.info("%s", self.banner)

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        log.info("shutting down (signal %s); open uploads store what they have", signal.Signals(sig).name)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.tus_app.shutdown)
        super().handle_exit(sig, frame)


def serve(app: TusApp, options: ServeOptions, banner: str) -> None:
    """Run ``app`` until SIGINT or SIGTERM; log ``banner`` once the socket listens."""
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        uds=options.unix_socket or None,
        loop="uvloop" if has_uvloop else "asyncio",
        http=_http_protocol(app.metrics),
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
    app.metrics.server_counts_connections = True  # connections, not requests, in tusd_connections_open
    server = _Server(config, app, banner)
    try:
        server.run()
    finally:
        app.metrics.process_exited()
    if server.force_exit:
        os._exit(1)
