"""``pytusd --workers N``: several server processes on one port (pre-fork, the parent hands out connections).

The parent binds the listening socket(s) once and forks N workers. Each worker goes on through the command's normal
start-up - it builds its own store, locker, hooks, metrics and server after the fork, so no thread,
connection or event loop crosses it. Workers share uploads only through the store and the locker, so the locker must
work across processes: the file locker (the default for ``--upload-dir``) or ``--locker redis``. The memory locker
is refused at start-up.

Connections: the parent accepts them and passes each one (its file descriptor, over a UNIX socket pair per worker)
to the worker with the fewest open connections; a worker reports each connection it closes. This is what Node's
cluster module does by default (round-robin there), for the same reason: with one listening socket shared by all
workers the kernel gives connections to whichever worker wakes first, and with ``SO_REUSEPORT`` it spreads them by a
hash of the addresses - measured here, 8 uploads starting together landed 5/3 and 6/2 on two workers with
``SO_REUSEPORT`` and all on one with a shared socket, so the second core idled (bench/NOTES.md, scenario 5). The
parent's cost is an accept and a ``sendmsg`` per connection, not per request.

The parent does no HTTP. It

- starts worker 1 and waits until it is ready (app built, lifespan started), then the others: a configuration
  error is reported once, by worker 1, and the parent exits with its status (2 for bad flags). Connections wait in
  the listen backlog until a worker is ready;
- forwards SIGTERM and SIGINT: on the first one it closes the listening socket (new connections are refused, as a
  single process does) and asks every worker for a graceful stop (open uploads store what they have and answer 503,
  within ``--shutdown-timeout``); a second one makes them quit at once. It then waits for all workers and exits 0.
  A worker still alive ``--shutdown-timeout`` + 10 s later is killed;
- replaces a worker that exits while the server runs (logged as a warning; after a 1 s pause when the worker lived
  less than 10 s, so a crash loop does not spin). Its open connections are lost, as with any crash; clients resume.
  A worker that fails *before* it is ready, at start-up or as a replacement, stops the whole server with status 1: a
  half-working server is worse than a clear exit for the orchestrator to act on.

The graceful stop reaches a worker as SIGUSR2, which a worker treats as "stop gracefully" and ignores once it is
stopping: a SIGTERM that also reaches the workers directly (systemd's default ``KillMode=control-group``, Ctrl-C in a
terminal, which signals the whole process group) must not count twice and turn into "quit at once". Workers get
SIGTERM if the parent dies (``PR_SET_PDEATHSIG``).

Metrics: each worker has its own numbers; ``/metrics`` (served by whichever worker takes the request) must sum them,
which prometheus_client's multiprocess mode does. When ``PROMETHEUS_MULTIPROC_DIR`` is not set, the parent creates
a temporary directory for it (removed when the parent exits) before the workers build their metrics; the parent
marks a dead worker's live gauges dead, as a worker ending normally does itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import select
import shutil
import signal
import socket
import ssl
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .lifecycle import GRACEFUL_SIGNAL, tusd_line

log = logging.getLogger("pytusd.startup")

_READY = b"R"  # worker -> parent: listening
_CLOSED = b"c"  # worker -> parent: one connection closed
_PR_SET_PDEATHSIG = 1
_QUICK_DEATH = 10.0  # a worker that lived less than this is replaced after a pause
_RESTART_PAUSE = 1.0
_KILL_GRACE = 10.0  # after --shutdown-timeout, before SIGKILL
_ACCEPT_BATCH = 64  # connections accepted per wake-up of the parent, at most


@dataclasses.dataclass
class Worker:
    """What a worker process knows about itself: set in the worker by :func:`start`, used by the server."""

    index: int
    count: int
    channel: socket.socket  # to the parent: connections come in, "ready" and "closed" go out
    sockets: list[socket.socket] = dataclasses.field(default_factory=list)  # none: connections come from the parent

    def connection_closed(self) -> None:
        """A connection this worker was handed is closed: the parent counts it off."""
        _tell(self.channel, _CLOSED)

    def serve(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        stopping: Callable[[], bool],
        handshake_timeout: float = 60.0,
    ) -> None:
        """Called once the server has started: take connections from the parent from now on."""
        channel = self.channel
        channel.setblocking(False)

        async def adopt(sock: socket.socket) -> None:
            try:
                if ssl_context is None:
                    await loop.connect_accepted_socket(protocol, sock)
                else:
                    await loop.connect_accepted_socket(protocol, sock, ssl=ssl_context,
                                                       ssl_handshake_timeout=handshake_timeout)
            except (OSError, ValueError, asyncio.TimeoutError) as exc:  # e.g. a failed TLS handshake
                log.debug("connection lost before it was served: %r", exc)
                sock.close()
                _tell(channel, _CLOSED)

        def receive() -> None:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(channel, 256, 64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data, fds = b"", []
                if not data and not fds:  # the parent is gone
                    loop.remove_reader(channel.fileno())
                    return
                for fd in fds:
                    sock = socket.socket(fileno=fd)
                    if stopping():  # stopping: not one more connection
                        sock.close()
                        _tell(channel, _CLOSED)
                        continue
                    sock.setblocking(False)
                    loop.create_task(adopt(sock))

        loop.add_reader(channel.fileno(), receive)
        _tell(channel, _READY)


def _tell(channel: socket.socket, message: bytes) -> None:
    with contextlib.suppress(OSError):
        channel.send(message)


_current: Worker | None = None


def current() -> Worker | None:
    """This process's :class:`Worker` under ``--workers N`` (N > 1), else None."""
    return _current


class WorkersError(Exception):
    """The workers cannot be started as asked (e.g. the socket cannot be bound)."""


def bind_sockets(host: str, port: int, unix_socket: str = "", backlog: int = 4096) -> list[socket.socket]:
    """The parent's listening sockets: every address ``host`` resolves to (as asyncio binds them), or a UNIX
    socket."""
    sockets: list[socket.socket] = []
    try:
        if unix_socket:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(unix_socket).st_mode):
                    os.unlink(unix_socket)  # a stale socket of an earlier run (asyncio does the same)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(unix_socket)
            os.chmod(unix_socket, 0o666)
        else:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            if port == 0:
                infos = infos[:1]  # a free port is chosen per address: listen on one address only
            seen = set()
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        for sock in sockets:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        where = unix_socket or f"{host}:{port}"
        raise WorkersError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    return sockets


def _set_pdeathsig(sig: int) -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _multiprocess_metrics_dir() -> str | None:
    """Turn on prometheus_client's multiprocess mode in a directory of our own, unless the user chose one. Must run
    before any metric is created (pytusd creates them when the app is built, in the workers)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"):
        return None
    directory = tempfile.mkdtemp(prefix="pytusd-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    # prometheus_client has no annotations
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


class _Forked(BaseException):
    """Unwinds a freshly forked worker out of the parent's loop (never caught by ``except Exception``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker


@dataclasses.dataclass
class _Child:
    index: int
    pid: int
    started: float
    channel: socket.socket  # the parent's end
    ready: bool = False
    gone: bool = False  # its channel closed: it is exiting (SIGCHLD follows)
    connections: int = 0  # handed to it and not reported closed yet


class _Supervisor:
    def __init__(
        self, count: int, sockets: list[socket.socket], unix_socket: str, shutdown_timeout: float,
        show_startup_logs: bool = True, upload_line: Callable[[list[Any]], str] | None = None,
    ) -> None:
        self.count = count
        self.show_startup_logs = show_startup_logs
        self.upload_line = upload_line
        self.sockets = sockets
        self.unix_socket = unix_socket
        self.shutdown_timeout = shutdown_timeout
        self.pid = os.getpid()
        self.children: dict[int, _Child] = {}
        self.restarts: list[tuple[float, int]] = []  # (when, index)
        self.stopping = False
        self.forced = False  # a second signal: the workers quit at once
        self.killed = False  # workers outlived the stop and were killed
        self.starting = True
        self.kill_at = 0.0
        self.status = 0
        self.owned_metrics_dir: str | None = None
        self.metrics_dir: str | None = None
        self.next_choice = 0

    # -- the parent's event sources --------------------------------------------------------------------------------

    def _open_pipes(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: None)  # the number arrives through the wake-up pipe

    def _close_pipes(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close_listeners(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        if self.unix_socket:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_socket)
            self.unix_socket = ""

    # -- children -------------------------------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGCHLD, GRACEFUL_SIGNAL):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.close(self.wake_r)
                os.close(self.wake_w)
                parent_end.close()
                for sock in self.sockets:  # only the parent listens: once it closes them, they are closed
                    sock.close()
                for child in self.children.values():
                    child.channel.close()
                _set_pdeathsig(signal.SIGTERM)
                if os.getppid() != self.pid:  # the parent died before prctl
                    os._exit(1)
            except BaseException:
                os._exit(1)
            raise _Forked(Worker(index, self.count, child_end))
        child_end.close()
        parent_end.setblocking(False)
        self.children[pid] = _Child(index, pid, time.monotonic(), parent_end)

    def _signal_children(self, sig: int, only_ready: bool | None = None) -> None:
        for child in list(self.children.values()):
            if only_ready is None or child.ready == only_ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)

    def _stop(self, status: int = 0) -> None:
        """First call: stop listening, ask every worker for a graceful stop. Later calls: make them quit at once."""
        if not self.stopping:
            self.stopping = True
            self.status = status
            self.restarts.clear()
            self._close_listeners()
            self.kill_at = time.monotonic() + self.shutdown_timeout + _KILL_GRACE
            self._signal_children(GRACEFUL_SIGNAL, only_ready=True)
            self._signal_children(signal.SIGTERM, only_ready=False)  # not serving yet: SIGTERM ends it either way
        else:
            self._signal_children(signal.SIGTERM)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            child.channel.close()
            if self.metrics_dir:
                from prometheus_client import multiprocess

                with contextlib.suppress(OSError):
                    # prometheus_client has no annotations
                    multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            code = os.waitstatus_to_exitcode(wait_status)
            how = f"exited with status {code}" if code >= 0 else f"was killed by {signal.Signals(-code).name}"
            if self.stopping:
                continue
            if not child.ready:
                log.error("pytusd: worker %d (pid %d) %s before it was ready; stopping", child.index + 1, pid, how)
                # At start-up worker 1 runs alone and reports configuration errors (status 2): pass its status on.
                self._stop(code if self.starting and child.index == 0 and code > 0 else 1)
                continue
            lived = time.monotonic() - child.started
            pause = _RESTART_PAUSE if lived < _QUICK_DEATH else 0.0
            log.warning("pytusd: worker %d (pid %d) %s; starting a new one", child.index + 1, pid, how)
            self.restarts.append((time.monotonic() + pause, child.index))

    def _read_channel(self, child: _Child) -> None:
        try:
            data = child.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker is gone (SIGCHLD tells the rest)
            child.gone = True
            return
        if _READY in data and not child.ready:
            child.ready = True
            if self.stopping:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, GRACEFUL_SIGNAL)
        child.connections = max(0, child.connections - data.count(_CLOSED))

    def _choose(self, exclude: set[int]) -> _Child | None:
        """The ready worker with the fewest open connections (ties: the next one in turn)."""
        ready = [
            c for c in sorted(self.children.values(), key=lambda c: c.index)
            if c.ready and not c.gone and c.pid not in exclude
        ]
        if not ready:
            return None
        k = self.next_choice % len(ready)
        ready = ready[k:] + ready[:k]
        self.next_choice += 1
        return min(ready, key=lambda c: c.connections)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED, ...: leave it for the next round
                log.warning("pytusd: accept failed: %s", exc)
                return
            with conn:
                tried: set[int] = set()
                while True:
                    child = self._choose(tried)
                    if child is None:
                        break  # no worker can take it: the client sees the connection closed
                    try:
                        socket.send_fds(child.channel, [b"x"], [conn.fileno()])
                        child.connections += 1
                        break
                    except (BlockingIOError, InterruptedError):
                        tried.add(child.pid)  # its channel is full: another worker
                    except OSError:
                        child.gone = True

    def _wait(self, timeout: float) -> None:
        now = time.monotonic()
        for when, index in [r for r in self.restarts if r[0] <= now]:
            self.restarts.remove((when, index))
            self._spawn(index)
        if self.restarts:
            timeout = min(timeout, min(when for when, _ in self.restarts) - now)
        channels = {c.channel.fileno(): c for c in self.children.values() if not c.gone}
        watch: list[Any] = [self.wake_r, *channels]
        if not self.stopping and any(c.ready for c in self.children.values()):
            watch += self.sockets
        try:
            readable, _, _ = select.select(watch, [], [], max(0.0, timeout))
        except InterruptedError:
            readable = []
        if self.wake_r in readable:
            self._read_signals()
            self._reap()
        for item in readable:
            if isinstance(item, int) and item in channels:
                self._read_channel(channels[item])
        for item in readable:
            if isinstance(item, socket.socket) and not self.stopping:
                self._accept(item)

    def _read_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info(
                        "pytusd: %s: stopping %d worker(s) gracefully", signal.Signals(signum).name, len(self.children)
                    )
                    tusd_line("Received interrupt signal. Shutting down pytusd...")
                elif not self.forced:
                    self.forced = True
                    tusd_line("Received second interrupt signal. Exiting immediately!")
                self._stop()

    # -- the parent's life ----------------------------------------------------------------------------------------

    def run(self) -> Worker:
        """In a worker: returns its :class:`Worker`. In the parent: exits (SystemExit) when the workers are done."""
        self.owned_metrics_dir = _multiprocess_metrics_dir()
        from ..observe.metrics import multiprocess_dir

        self.metrics_dir = multiprocess_dir()
        self._open_pipes()
        try:
            self._start_all()
            self.starting = False
            if not self.stopping and self.show_startup_logs:
                log.info("pytusd: %d workers ready (pids %s)", self.count,
                         " ".join(str(c.pid) for c in sorted(self.children.values(), key=lambda c: c.index)))
            if not self.stopping and self.upload_line is not None:
                if line := self.upload_line([sock.getsockname() for sock in self.sockets]):
                    tusd_line(line)
            while self.children or (self.restarts and not self.stopping):
                now = time.monotonic()
                if self.stopping and now >= self.kill_at:
                    log.error("pytusd: workers still running %.0f s after the stop; killing them",
                              self.shutdown_timeout + _KILL_GRACE)
                    self._signal_children(signal.SIGKILL)
                    self.killed = True
                    self.kill_at = now + 3600
                self._wait(1.0)
        except _Forked as forked:
            return forked.worker
        finally:
            if os.getpid() == self.pid:
                self._cleanup()
        if self.status == 0 and not self.forced and not self.killed:
            tusd_line("Shutdown completed. Goodbye!")
        raise SystemExit(self.status)

    def _start_all(self) -> None:
        # Worker 1 alone first: a configuration error then shows once, and with its exit status.
        self._spawn(0)
        while not self.stopping and not all(c.ready for c in self.children.values()):
            self._wait(1.0)
        for index in range(1, self.count):
            if self.stopping:
                return
            self._spawn(index)
        while not self.stopping and not (
            len(self.children) == self.count and all(c.ready for c in self.children.values())
        ):
            self._wait(1.0)

    def _cleanup(self) -> None:
        if self.children:  # only on an unexpected error in the parent: do not leave workers behind
            self._signal_children(signal.SIGKILL)
            for pid in list(self.children):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        for child in self.children.values():
            child.channel.close()
        self._close_pipes()
        self._close_listeners()
        if self.owned_metrics_dir:
            shutil.rmtree(self.owned_metrics_dir, ignore_errors=True)


def start(
    count: int, host: str, port: int, unix_socket: str, shutdown_timeout: float, *,
    show_startup_logs: bool = True, upload_line: Callable[[list[Any]], str] | None = None,
) -> None:
    """Fork ``count`` workers behind one listening socket. Returns only in a worker (see :func:`current`); the
    parent supervises them and exits with ``SystemExit`` when they are done. Once they are ready it logs so
    (unless ``show_startup_logs`` is false), then the line ``upload_line`` makes of its listening addresses."""
    global _current
    try:
        sockets = bind_sockets(host, port, unix_socket)
    except WorkersError as exc:
        print(f"pytusd: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    _current = _Supervisor(count, sockets, unix_socket, shutdown_timeout, show_startup_logs, upload_line).run()
