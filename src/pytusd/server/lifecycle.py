"""The server's life: listening (TCP, UNIX socket, TLS with ALPN), the app's lifespan, signals, graceful shutdown.

On the first SIGINT or SIGTERM the server logs tusd's line, stops listening, has the app interrupt open uploads
(they store what they received and answer 503 ERR_SERVER_SHUTDOWN; new requests on open connections get the same),
closes idle connections and waits up to ``--shutdown-timeout`` for the rest, runs the lifespan shutdown and
returns: the command exits 0, as tusd does. A second signal exits at once (status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from .asgi import HttpDate
from .h1 import H1Connection
from .framing import MAX_CHUNK_LINE_SIZE, MAX_TRAILER_FIELDS, MAX_TRAILER_SIZE, FramingLimits

log = logging.getLogger("pytusd.startup")
# Under --workers the parent asks its workers for a graceful stop with this signal (pytusd.server.workers).
GRACEFUL_SIGNAL = signal.SIGUSR2


def tusd_line(message: str, error: bool = False) -> None:
    """A line as tusd's command prints it, for the scripts (and tusd's own tests) that wait for it: on stdout
    (``error``: stderr), after Go's log timestamp (``2006/01/02 15:04:05.000000``). The upload URL once listening,
    and the shutdown's lines."""
    now = time.time()
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    stream = sys.stderr if error else sys.stdout
    try:
        stream.write(f"{stamp} {message}\n")
        stream.flush()
    except (OSError, ValueError):  # stdout closed or gone: the line is for scripts that read it
        pass


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
    # requests get 431 ERR_HEADERS_TOO_LARGE and the connection is closed. 0: no limit.
    max_header_size: int = 1024 * 1024
    # Chunked request bodies (see pytusd.server.framing): at least 1 each.
    max_chunk_line_size: int = MAX_CHUNK_LINE_SIZE
    max_trailer_size: int = MAX_TRAILER_SIZE
    max_trailer_fields: int = MAX_TRAILER_FIELDS
    enable_h2c: bool = False  # HTTP/2 without TLS, with prior knowledge (tusd's -enable-h2c)
    backlog: int = 4096

    @property
    def url(self) -> str:
        return self.url_at(self.port)

    def url_at(self, port: int) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self.tls_certificate else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}"

    @property
    def framing_limits(self) -> FramingLimits:
        return FramingLimits(self.max_chunk_line_size, self.max_trailer_size, self.max_trailer_fields)


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


def tls_context(options: ServeOptions) -> ssl.SSLContext | None:
    """The server's TLS context (None without a certificate), offering HTTP/2 and HTTP/1.1 by ALPN, as Go does."""
    if not options.tls_certificate:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(options.tls_certificate, options.tls_key or None)
    apply_tls_mode(context, options.tls_mode)
    from . import h2

    context.set_alpn_protocols(["h2", "http/1.1"] if h2.available() else ["http/1.1"])
    return context


class ServerState:
    """What every connection of one server shares."""

    def __init__(self, app: Any, options: ServeOptions, loop: asyncio.AbstractEventLoop, metrics: Any = None) -> None:
        self.app = app
        self.options = options
        self.loop = loop
        self.metrics = metrics  # tusd_connections_open counts connections
        self.app_state: dict[str, Any] = {}  # the lifespan state, copied into every request's scope
        self.date = HttpDate()
        self.connections: set[Any] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.idle = asyncio.Event()  # no connection left (while stopping)
        self.on_closed: Callable[[], None] | None = None  # under --workers: tell the parent

    def connection_opened(self, conn: Any) -> None:
        self.connections.add(conn)
        self.idle.clear()
        if self.metrics is not None:
            self.metrics.connection_opened()
        if self.stopping:
            conn.shutdown()

    def connection_closed(self, conn: Any) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if self.metrics is not None:
            self.metrics.connection_closed()
        if self.on_closed is not None:
            self.on_closed()
        if not self.connections:
            self.idle.set()

    def replace(self, old: Any, new: Any) -> None:
        """A connection changed protocols (HTTP/1.1 to HTTP/2): the same connection, counted once."""
        self.connections.discard(old)
        self.connections.add(new)

    def start_request(self, conn: Any, cycle: Any) -> None:
        task = self.loop.create_task(cycle.run(self.app))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def protocol(self) -> asyncio.Protocol:
        """A new connection's protocol: HTTP/1.1, which hands over to HTTP/2 when ALPN or the h2c preface says
        so (pytusd.server.h2)."""
        return H1Connection(self)


class Lifespan:
    """The ASGI lifespan protocol, for apps that speak it (TusApp does; an app that raises on it does not)."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.queue.get, self.answers.put)
        except BaseException as exc:  # noqa: BLE001 - an app without lifespan support raises here
            if not isinstance(exc, asyncio.CancelledError):
                log.debug("the app does not run lifespan events: %r", exc)
        # Returned (or raised) without answering: an app that does not speak lifespan, served without it.
        self.supported = False
        await self.answers.put({"type": "lifespan.unsupported"})

    async def _ask(self, kind: str, timeout: float | None) -> dict[str, Any]:
        await self.queue.put({"type": kind})
        return await asyncio.wait_for(self.answers.get(), timeout)

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        answer = await self._ask("lifespan.startup", None)
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the app failed to start: {answer.get('message', '')}")

    async def shutdown(self, timeout: float) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await self._ask("lifespan.shutdown", timeout)
        if not self.task.done():
            self.task.cancel()


class Server:
    """Serve an ASGI ``app`` until :meth:`request_stop` (or a signal, under :meth:`run`).

    ``announce(addresses)`` is called once the sockets listen, with what they are bound to. ``worker``: under
    ``--workers``, the connections come from the parent (pytusd.server.workers) instead of own sockets.
    """

    def __init__(
        self,
        app: Any,
        options: ServeOptions,
        announce: Callable[[list[Any]], None] | None = None,
        worker: Any = None,
        metrics: Any = None,
    ) -> None:
        self.app = app
        self.options = options
        self.announce = announce
        self.worker = worker
        self.metrics = metrics
        self.servers: list[asyncio.Server] = []
        self.forced = False
        self.timed_out = False
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state: ServerState | None = None
        self.started = False
        self.deadline = 0.0  # loop time by which the graceful stop ends

    def request_stop(self) -> None:
        """Begin the graceful stop (thread-safe); a second call exits at once."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_requested)

    def _stop_requested(self) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            self.forced = True
            if self.worker is None:  # under --workers the parent says so, once
                tusd_line("Received second interrupt signal. Exiting immediately!")
            os._exit(1)
        self._stop.set()

    async def serve(self, sockets: Iterable[socket.socket] | None = None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if self._stop is None:
            self._stop = asyncio.Event()
        state = self.state = ServerState(self.app, self.options, loop, self.metrics)
        lifespan = Lifespan(self.app, state.app_state)
        await lifespan.startup()
        context = tls_context(self.options)
        try:
            if self.worker is not None:
                state.on_closed = self.worker.connection_closed
                self.worker.serve(loop, state.protocol, context, lambda: state.stopping, self.options.network_timeout)
            else:
                await self._listen(state, context, sockets)
            self.started = True
            if self.announce is not None:
                self.announce([address for server in self.servers for address in _addresses(server)])
            await self._stop.wait()
            await self._shutdown(state)
        finally:
            for server in self.servers:
                server.close()
            if self.options.unix_socket and self.worker is None:
                with contextlib.suppress(OSError):
                    os.unlink(self.options.unix_socket)
            # What is left of --shutdown-timeout, and a moment at least (TusApp's is quick: flush the traces).
            left = self.deadline - loop.time() if self.deadline else self.options.shutdown_timeout
            await lifespan.shutdown(max(0.2, left))

    async def _listen(self, state: ServerState, context: ssl.SSLContext | None,
                      sockets: Iterable[socket.socket] | None) -> None:
        loop = state.loop
        options = self.options
        # A TLS handshake must complete within the network timeout, as a request head must (Go: ReadHeaderTimeout).
        tls: dict[str, Any] = {"ssl": context, "ssl_handshake_timeout": options.network_timeout} if context else {}
        if sockets is not None:
            for sock in sockets:
                self.servers.append(await loop.create_server(state.protocol, sock=sock, backlog=options.backlog,
                                                             **tls))
        elif options.unix_socket:
            path = options.unix_socket
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # a stale socket of an earlier run
            server = await loop.create_unix_server(state.protocol, path, backlog=options.backlog, **tls)
            os.chmod(path, 0o666)
            self.servers.append(server)
        else:
            self.servers.append(await loop.create_server(
                state.protocol, host=options.host or None, port=options.port, backlog=options.backlog,
                reuse_address=True, **tls,
            ))

    async def _shutdown(self, state: ServerState) -> None:
        state.stopping = True
        self.deadline = state.loop.time() + self.options.shutdown_timeout
        for server in self.servers:
            server.close()
        shutdown = getattr(self.app, "shutdown", None)
        if callable(shutdown):
            shutdown()  # open uploads store what they have and answer 503; new requests get 503 too
        for conn in list(state.connections):
            conn.shutdown()
        if state.connections:
            state.idle.clear()
            try:
                await asyncio.wait_for(state.idle.wait(), max(0.0, self.deadline - state.loop.time()))
            except asyncio.TimeoutError:
                self.timed_out = True
                log.warning("shutdown: %d connection(s) still open after --shutdown-timeout; closing them",
                            len(state.connections))
                if self.worker is None:
                    tusd_line("Shutdown timeout exceeded. Exiting immediately!", error=True)
                for conn in list(state.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
                for task in list(state.tasks):
                    task.cancel()
        # Requests whose client went away may still be storing what they received: they finish too (or are
        # cancelled at the deadline).
        tasks = [task for task in state.tasks if not task.done()]
        if tasks and not self.timed_out:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, self.deadline - state.loop.time()))
            if pending:
                self.timed_out = True
                log.warning("shutdown: %d request(s) still running after --shutdown-timeout; cancelling them",
                            len(pending))
                if self.worker is None:
                    tusd_line("Shutdown timeout exceeded. Exiting immediately!", error=True)
                for task in pending:
                    task.cancel()
        if not self.timed_out and self.worker is None:
            tusd_line("Shutdown completed. Goodbye!")

    def run(self, sockets: Iterable[socket.socket] | None = None) -> None:
        """Serve in a new event loop (uvloop's where installed) until SIGINT or SIGTERM asks for the graceful stop
        (a second one exits at once). Under ``--workers`` the parent's graceful stop, GRACEFUL_SIGNAL, counts once: a
        SIGTERM that reached this worker directly as well (systemd, Ctrl-C) must not turn it into "quit at once"."""
        import importlib.util

        factory: Any = None
        if importlib.util.find_spec("uvloop") is not None:
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self._run_with_signals(sockets))

    async def _run_with_signals(self, sockets: Iterable[socket.socket] | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = stop = asyncio.Event()

        def received(sig: int, graceful_only: bool = False) -> None:
            if not stop.is_set():
                log.info("shutting down (%s): open uploads store what they have", signal.Signals(sig).name)
                if self.worker is None:  # under --workers the parent says so, once
                    tusd_line("Received interrupt signal. Shutting down pytusd...")
            elif graceful_only:
                return
            self._stop_requested()

        signals = [signal.SIGINT, signal.SIGTERM]
        for sig in signals:
            loop.add_signal_handler(sig, received, sig)
        if self.worker is not None:

            signals.append(GRACEFUL_SIGNAL)
            loop.add_signal_handler(GRACEFUL_SIGNAL, received, GRACEFUL_SIGNAL, True)
        try:
            await self.serve(sockets)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


def _addresses(server: asyncio.Server) -> list[Any]:
    return [sock.getsockname() for sock in server.sockets]
