"""Splicing a request body from the socket into a file with ``splice(2)``: the bytes never enter the process.

For a Content-Length body on a plain (not TLS) HTTP/1.1 connection the connection offers a :class:`Splicer` as
``scope["extensions"][SPLICE_EXTENSION]``; :meth:`pytusd.core.body.RequestBody.splice_into` uses it for stores that write
to a file descriptor (the file store). The kernel moves the bytes socket -> pipe -> file, once, into the page cache,
instead of twice through a Python ``bytes``. The transport stops reading meanwhile; a duplicate of the socket's
descriptor is watched for readability. Measured (bench/NOTES.md): a 1 GiB PATCH at about half the CPU time.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import time
from collections.abc import Callable
from typing import Any

from ..fileio import Pool, pwrite_all

# PYTUSD_NO_SPLICE=1 turns splicing off (a diagnostic: the benchmark compares both ways in one run).
CAN_SPLICE = hasattr(os, "splice") and os.environ.get("PYTUSD_NO_SPLICE", "") not in ("1", "true")
_PIPE_SIZE = 1 << 20  # bytes moved per splice(2) call at most (the pipe is grown to this where allowed)
_SPLICE_BUDGET = 8 << 20  # bytes moved per readiness callback at most, so other connections get their turn
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_MS = 2  # with a pool: how long a pump waits for more bytes before it lets its thread go
_TICK = 0.25  # with a pool: seconds between a pump's reports to the loop while it runs


class Splicer:
    """What the server offers a request as ``scope["extensions"][SPLICE_EXTENSION]``: splicing *this* request's body
    into a file (see the module docstring and :meth:`pytusd.core.body.RequestBody.splice_into`). It works while the
    request is the connection's current one (a pipelined request behind it has not taken over the parser yet)."""

    __slots__ = ("conn", "cycle")

    def __init__(self, conn: Any, cycle: Any) -> None:
        self.conn = conn  # pytusd.server.h1.H1Connection
        self.cycle = cycle

    def _current(self) -> bool:
        """Whether this request is still the one whose body the connection is reading."""
        return bool(self.conn.reads_body_of(self.cycle))

    def take_pending(self) -> list[bytes] | None:
        """Start of a splice: the body bytes received but not yet read by the app (they are the app's to write
        now), or None when the rest of the body cannot be spliced (it is all here already, the request was
        answered, the client is gone)."""
        conn, cycle = self.conn, self.cycle
        if (not self._current() or conn.body_left <= 0 or cycle.complete or cycle.disconnected
                or conn.splicing is not None or conn.transport.is_closing()):
            return None
        if cycle.expect_continue:  # as receive() does before the first read of the body
            cycle.expect_continue = False
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = cycle.body
        cycle.body, cycle.pending = [], 0
        return chunks

    def body_left(self) -> int:
        """Body bytes of this request that have not arrived yet."""
        return self.conn.body_left if self._current() else 0

    def splice(
        self,
        fd: int,
        offset: int,
        count: int,
        progress: Callable[[int], None],
        pool: Pool | None = None,
        head: list[bytes] | None = None,
    ) -> asyncio.Future[int]:
        """Move the next ``count`` body bytes from the socket into ``fd`` at ``offset``; ``progress(n)`` after
        every ``n`` bytes stored. The future ends with the number of body bytes still to come (0: the body is
        complete), -1 when the client closed the connection first, or the OSError of writing the file. Cancel it
        (and call :meth:`stop_splice`) to stop.

        With a ``pool`` (:class:`pytusd.fileio.Pool`) the event loop never waits for the file: ``head`` (bytes
        received already) and then the socket's bytes are moved by a pump in a pool thread (see :class:`_Splice`);
        ``progress`` then comes at least every few tenths of a second while bytes flow."""
        splice = _Splice(self.conn, fd, offset, min(count, self.body_left()), progress, pool, head)
        self.conn.splicing = splice
        splice.start()
        return splice.future

    def stop_splice(self) -> asyncio.Future[None] | None:
        """Stop splicing. Returns a future that is done once nothing writes to the file any more (a pool thread may
        be storing what it read from the socket already), or None when no splice was running."""
        splicing: _Splice | None = self.conn.splicing
        if splicing is None:
            return None
        splicing.finish(None)
        return splicing.closed


class _Splice:
    """One splice of a body into a file (Splicer.splice).

    Inline (no pool), each readiness callback of the loop moves socket -> pipe -> file itself.

    With a pool, a pump in a pool thread does both halves, and the loop only watches the socket: the pipe must not
    be touched by the loop at all, since splice(2) from a pipe into a file holds the pipe's lock for as long as the
    file takes to write, and a non-blocking splice into that pipe from the loop then waits for the lock (measured on
    a slow FUSE filesystem: the loop stalled for the whole write). The pump runs while bytes keep coming, lingering
    _LINGER_MS for more; then it lets its thread go and the loop watches the socket again. It tells the loop how far
    it got every _TICK seconds (progress, and that the client is not silent) and when it stops. The loop closes
    nothing the pump uses until it stopped.
    """

    def __init__(
        self,
        protocol: Any,
        fd: int,
        offset: int,
        count: int,
        progress: Callable[[int], None],
        pool: Pool | None = None,
        head: list[bytes] | None = None,
    ) -> None:
        self.protocol = protocol
        self.fd = fd
        self.offset = offset
        self.left = count  # body bytes still to read from the socket
        self.progress = progress
        self.pool = pool
        self.loop: asyncio.AbstractEventLoop = protocol.loop
        self.future: asyncio.Future[int] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()  # nothing writes to fd any more
        self.sock_fd = -1
        self.pipe_r = self.pipe_w = -1
        self.watching = False
        # With a pool. The pump alone writes `head`, `read`, `stored` and `result`; the loop alone the rest.
        self.head = head or []  # written by the pump before the socket's bytes
        self.read = 0  # body bytes the pump took from the socket
        self.stored = 0  # bytes the pump wrote into the file (head included)
        self.result: bool | OSError | None = None  # why the pump stopped for good (None: idle, or stopped)
        self.read_seen = self.stored_seen = 0  # of `read` and `stored`, what the loop accounted for
        self.pumping = False
        self.ending: list[bool | OSError | None] = []  # finish() was called: how to end once the pump stopped

    def start(self) -> None:
        protocol = self.protocol
        if self.left <= 0 and not self.head:
            self.finish(True)
            return
        try:
            sock = protocol.transport.get_extra_info("socket")
            self.sock_fd = os.dup(sock.fileno())  # the transport's own fd cannot be watched by anyone else
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass  # the per-user pipe budget is spent: the default size works too, in smaller steps
        except OSError as exc:
            self.finish(exc)
            return
        protocol._update_reading()  # paused: from now on only splice(2) reads this socket, until finish()
        if self.pool is None:
            self._watch()
            self.ready()  # bytes may be waiting already
        else:
            self._pump_now()  # the head, and bytes that may be waiting already

    def _watch(self) -> None:
        if not self.watching and self.sock_fd >= 0:
            self.loop.add_reader(self.sock_fd, self.ready if self.pool is None else self._pump_now)
            self.watching = True

    def _unwatch(self) -> None:
        if self.watching:
            self.loop.remove_reader(self.sock_fd)
            self.watching = False

    def ready(self) -> None:
        budget = _SPLICE_BUDGET
        try:
            while self.left > 0 and budget > 0:
                try:
                    n = os.splice(self.sock_fd, self.pipe_w, min(self.left, _PIPE_SIZE, budget),
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # ECONNRESET and the like: the client is gone
                    self.finish(False)
                    return
                if n == 0:  # EOF
                    self.finish(False)
                    return
                moved = 0
                while moved < n:  # the pipe into the file: page cache, does not block for long
                    k = os.splice(self.pipe_r, self.fd, n - moved, offset_dst=self.offset, flags=os.SPLICE_F_MOVE)
                    if k == 0:
                        raise OSError("splice into the file stalled")
                    self.offset += k
                    moved += k
                    self.progress(k)
                self.left -= n
                budget -= n
                self.protocol.body_left -= n
        except OSError as exc:  # writing the file failed: what is in the pipe is lost with the request
            self.finish(exc)
            return
        if self.left <= 0:
            self.finish(True)

    # -- with a pool ----------------------------------------------------------------------------------------------

    def _pump_now(self) -> None:
        """On the loop: the socket is readable (or the splice starts): hand it to a pump."""
        self._unwatch()
        if self.pumping or self.ending:
            return
        self.pumping = True
        assert self.pool is not None
        self.pool.submit(self._pump)

    def _pump(self) -> None:
        """In a pool thread: socket -> pipe -> file while bytes come."""
        loop, sock_fd, pipe_r, pipe_w, fd = self.loop, self.sock_fd, self.pipe_r, self.pipe_w, self.fd
        poller: select.poll | None = None
        tick = time.monotonic() + _TICK
        try:
            if self.head:
                head, self.head = self.head, []
                n, exc = pwrite_all(fd, head, self.offset)
                self.stored += n
                if exc is not None:
                    raise exc
            left = self.left - self.read
            while left > 0 and not self.ending:
                try:
                    n = os.splice(sock_fd, pipe_w, min(left, _PIPE_SIZE),
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except (BlockingIOError, InterruptedError):
                    if poller is None:
                        poller = select.poll()
                        poller.register(sock_fd, select.POLLIN)
                    if poller.poll(_LINGER_MS):
                        continue
                    break  # quiet: let the thread go, the loop watches the socket
                except OSError:  # ECONNRESET and the like: the client is gone
                    self.result = False
                    break
                if n == 0:  # EOF
                    self.result = False
                    break
                self.read += n
                left -= n
                moved = 0
                while moved < n:  # the pipe into the file: as slow as the file is
                    k = os.splice(pipe_r, fd, n - moved, offset_dst=self.offset + self.stored,
                                  flags=os.SPLICE_F_MOVE)
                    if k == 0:
                        raise OSError("splice into the file stalled")
                    moved += k
                    self.stored += k
                if time.monotonic() >= tick:
                    tick = time.monotonic() + _TICK
                    loop.call_soon_threadsafe(self._account)
            else:
                if left <= 0:
                    self.result = True
        except OSError as exc:  # writing the file failed: what is in the pipe is lost with the request
            self.result = exc
        except BaseException as exc:  # pragma: no cover - a bug: do not leave the request hanging
            self.result = OSError(f"splice pump failed: {exc!r}")
        try:
            loop.call_soon_threadsafe(self._pumped)
        except RuntimeError:  # pragma: no cover - the loop is closed
            pass

    def _account(self) -> None:
        """On the loop: what the pump did so far becomes progress (and the parser's count of body bytes left)."""
        read, stored = self.read, self.stored
        if read > self.read_seen:
            if self.protocol.splicing is self:
                self.protocol.body_left -= read - self.read_seen
            self.read_seen = read
        if stored > self.stored_seen:
            n, self.stored_seen = stored - self.stored_seen, stored
            self.progress(n)

    def _pumped(self) -> None:
        """On the loop: the pump stopped - for good, or until more bytes come."""
        self.pumping = False
        if self.protocol.splicing is not self:
            return
        self._account()
        if self.result is None and not self.ending:
            self._watch()  # idle: the next bytes start a pump again
            return
        self._close(self.result if self.result is not None else self.ending[0])

    # -- the end --------------------------------------------------------------------------------------------------

    def finish(self, outcome: bool | OSError | None) -> None:
        """Stop: True (all of it), False (the client went away), an OSError of the file, None (stopped). With a
        pool: once the pump stopped (it stores what it read first)."""
        if self.protocol.splicing is not self:
            return
        if self.pumping:
            if not self.ending:
                self.ending.append(outcome)
            return
        self._close(outcome)

    def _close(self, outcome: bool | OSError | None) -> None:
        protocol = self.protocol
        if protocol.splicing is not self:
            return
        if self.pool is not None:
            self._account()
        protocol.splicing = None
        self._unwatch()
        if self.sock_fd >= 0:
            os.close(self.sock_fd)
            self.sock_fd = -1
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1
        remaining = protocol.body_left
        if outcome is True and remaining == 0:
            protocol._body_complete()  # reading resumes there
        else:
            protocol._update_reading()
        if not self.future.done():
            if isinstance(outcome, OSError):
                self.future.set_exception(outcome)
            elif outcome is None:
                self.future.cancel()
            else:
                self.future.set_result(remaining if outcome else -1)
        if not self.closed.done():
            self.closed.set_result(None)
