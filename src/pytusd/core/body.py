"""The request body as a stream of chunks that can be stopped.

:class:`RequestBody` hands ASGI body chunks to a store one by one, never buffering the body. It ends early,
without raising into the store, when

- the client disconnects (ERR_UNEXPECTED_EOF),
- no data arrives for ``network_timeout`` seconds (ERR_READ_TIMEOUT),
- with ``min_rate``: fewer than ``min_rate`` bytes per second arrive, on average over every ``network_timeout``
  seconds of waiting for them (ERR_READ_TIMEOUT; a body trickling in a byte at a time, slowloris style),
- more data arrives than ``limit`` allows (ERR_UPLOAD_SIZE_EXCEEDED, the allowed part is still handed on),
- :meth:`interrupt` is called: another request wants the upload's lock (ERR_UPLOAD_INTERRUPTED), the server shuts
  down (ERR_SERVER_SHUTDOWN), or a hook stops the upload.

The reason is kept in :attr:`error` for the handler to answer with, after the store has stored every byte it was
given. How long the store may take for that once the request has ended early (the client went away, the server shuts
down, another request wants the lock, a hook stopped the upload: :data:`REQUEST_ENDED`) is bounded by
:meth:`bound_completion` (tusd's GracefulRequestCompletionTimeout, ``--request-completion-timeout``). Per chunk, the hot path only records the time; one timer per request checks for silence. Only time spent
waiting for the client counts: while a store is busy with a chunk, the client cannot be blamed for sending nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from .. import errors
from ..asgitypes import Receive
from ..errors import TusError
from ..fileio import Pool, pwrite_all, settle, start

# With a pool, bodies shorter than this (still to come) are not spliced (bench/NOTES.md, "File I/O in threads").
POOL_SPLICE_MIN = 1 << 20

# The reasons that end a request as tusd's cancelled request context does: from then on the store has the request's
# completion timeout to store what arrived (bound_completion).
REQUEST_ENDED = (errors.ERR_UNEXPECTED_EOF, errors.ERR_SERVER_SHUTDOWN, errors.ERR_UPLOAD_INTERRUPTED,
                 errors.ERR_UPLOAD_STOPPED)


class RequestBody:
    __slots__ = (
        "_receive",
        "_timeout",
        "limit",
        "received",
        "error",
        "complete",
        "_task",
        "_waiting",
        "_cancelling",
        "_wait_start",
        "_waited",
        "_min_rate",
        "_window",
        "_timer",
        "splicer",
        "_grace",
        "_grace_task",
        "_grace_timer",
        "_overdue",
    )

    def __init__(self, receive: Receive, network_timeout: float, limit: int, min_rate: float = 0.0) -> None:
        self._receive = receive
        self._timeout = network_timeout
        self._min_rate = min_rate
        self.limit = limit
        self.received = 0
        self.error: TusError | None = None
        self.complete = False  # the client sent the whole body
        self._task: asyncio.Task[object] | None = None
        self._waiting = False
        self._cancelling = False
        self._wait_start = 0.0  # when the current (or last) wait for a chunk began
        self._waited = 0.0  # seconds spent waiting for chunks, the current wait excluded
        self._window = (0.0, 0)  # (_waited, received) when the current min_rate window began
        self._timer: asyncio.TimerHandle | None = None
        # pytusd's own server, for a Content-Length body on a plain connection: moves the body into a file by
        # splice(2) (pytusd.fastbody); see splice_into().
        self.splicer: Any = None
        self._grace = 0.0  # bound_completion: the seconds the store may go on after the request ended
        self._grace_task: asyncio.Task[object] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._overdue = False  # the grace ran out: _grace_task was cancelled for it

    def interrupt(self, error: TusError) -> None:
        """Stop reading as soon as possible; the first reason given is the one reported."""
        if self.error is None:
            self.error = error
        if self._waiting and self._task is not None and not self._cancelling:
            self._cancelling = True
            self._task.cancel()
        if error.is_(*REQUEST_ENDED):
            self._start_grace()

    # -- how long the store may go on once the request ended (tusd's GracefulRequestCompletionTimeout) ------------

    def bound_completion(self, seconds: float) -> None:
        """From when the request ends early (an :meth:`interrupt` for one of :data:`REQUEST_ENDED`, before or after
        this call), let the calling task go on storing what arrived for ``seconds`` at most; then it is cancelled
        (see :meth:`overdue`). :meth:`end_completion` once the work is done."""
        self._grace = seconds
        self._grace_task = asyncio.current_task()
        if self.error is not None and self.error.is_(*REQUEST_ENDED):
            self._start_grace()

    def _start_grace(self) -> None:
        task = self._grace_task
        if task is not None and self._grace_timer is None and not task.done():
            self._grace_timer = task.get_loop().call_later(self._grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace_timer = None
        if self._grace_task is not None and not self._grace_task.done():
            self._overdue = True
            self._grace_task.cancel()

    def overdue(self) -> bool:
        """Called on a CancelledError in the bounded task: whether it is the completion timeout's (which is then
        taken back, so the task can answer); False for any other cancellation, which must go on."""
        if not self._overdue:
            return False
        self._overdue = False
        task = self._grace_task
        return task is not None and task.uncancel() == 0

    def end_completion(self) -> None:
        """The bounded work is done (or failed): no cancellation comes any more."""
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._grace_task = None

    def _check_silence(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        silent = loop.time() - self._wait_start if self._waiting else 0.0
        if silent >= self._timeout:
            self.interrupt(errors.ERR_READ_TIMEOUT())
            return
        next_check = self._timeout - silent
        if self._min_rate:
            waited = self._waited + silent
            window_waited, window_received = self._window
            span = waited - window_waited
            if span >= self._timeout:
                if self.received - window_received < self._min_rate * span:
                    self.interrupt(errors.ERR_READ_TIMEOUT(
                        f"the request body arrived slower than {self._min_rate:g} bytes/s"
                    ))
                    return
                self._window = (waited, self.received)
                span = 0.0
            next_check = min(next_check, self._timeout - span)
        self._timer = loop.call_later(max(next_check, 0.01), self._check_silence)

    def chunks(self) -> BodyChunks:
        """The body's chunks, as an async iterator (with :meth:`BodyChunks.splice_into` for stores that write to a
        file descriptor)."""
        return BodyChunks(self)

    async def splice_into(
        self, fd: int, offset: int, done: Callable[[int], None], pool: Pool | None = None
    ) -> bool:
        """Write the body into ``fd`` from ``offset`` without it passing through Python, where the server can
        (pytusd's own, plain HTTP, a Content-Length body): ``done(n)`` after every ``n`` bytes written. Returns
        False, having read nothing, when it cannot; then iterate :meth:`chunks`. File errors raise OSError (after
        ``done`` was told what was written). Timeouts, :meth:`interrupt` and :attr:`received` work as for chunks.
        With a ``pool`` (:class:`pytusd.fileio.Pool`) the writes into ``fd`` run in its threads and the event loop
        never waits for the file. Whichever way it ends, nothing writes to ``fd`` once it returned."""
        splicer = self.splicer
        if splicer is None or self.error is not None or self._task is not None:
            return False
        if pool is not None and splicer.body_left() < POOL_SPLICE_MIN:
            return False  # measured: a short body costs less through chunks written behind in the pool
        pending = splicer.take_pending()
        if pending is None:
            return False
        loop = asyncio.get_running_loop()
        head: list[bytes] = []  # what arrived with the head: ours to write
        room = self.limit - self.received
        for chunk in pending:
            if room <= 0:
                break
            chunk = chunk[:room]
            room -= len(chunk)
            head.append(chunk)
        left = min(splicer.body_left(), room)
        position = offset
        if head and (pool is None or left <= 0):  # written here (inline, or all of the body came with the head)
            if pool is None:
                n, exc = pwrite_all(fd, head, position)
            else:
                n, exc = await start(pwrite_all, fd, head, position).outcome()
            position += n
            self.received += n
            done(n)
            if exc is not None:
                raise exc
            head = []
            if self.error is not None:  # interrupted while that was written
                return True
        if left <= 0:
            self._ended(splicer.body_left())
            return True

        def progress(n: int) -> None:  # with a pool: the head (if any) first, then the socket's bytes
            now = loop.time()
            self._waited += now - self._wait_start
            self._wait_start = now  # bytes arrived: the silence starts again
            self.received += n
            done(n)

        self._task = asyncio.current_task()
        self._timer = loop.call_later(self._timeout, self._check_silence)
        self._wait_start = loop.time()
        self._waiting = True
        try:
            if pool is None:
                remaining = await splicer.splice(fd, position, left, progress)
            else:
                remaining = await splicer.splice(fd, position, left, progress, pool=pool, head=head)
        except asyncio.CancelledError:
            stopped = splicer.stop_splice()
            if stopped is not None and not stopped.done():  # the pump is storing what was read: wait for it
                await settle(stopped)
            if not self._cancelling:
                raise
            self._cancelling = False
            if self._task is not None:
                self._task.uncancel()
            return True
        finally:
            self._waiting = False
            self._waited += loop.time() - self._wait_start
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._task = None
        if remaining < 0:
            self.interrupt(errors.ERR_UNEXPECTED_EOF("the client closed the connection"))
        else:
            self._ended(remaining)
        return True

    def _ended(self, remaining: int) -> None:
        """A splice stopped at the end of the body (nothing ``remaining``), or at the limit."""
        if remaining == 0:
            self.complete = True
        else:
            self.interrupt(errors.ERR_UPLOAD_SIZE_EXCEEDED())

    async def _iter_chunks(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timer = loop.call_later(self._timeout, self._check_silence)
        receive = self._receive
        more = True
        try:
            while more and self.error is None:
                self._wait_start = loop.time()
                self._waiting = True
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if not self._cancelling:
                        raise
                    self._cancelling = False
                    if self._task is not None:
                        self._task.uncancel()
                    return
                finally:
                    self._waiting = False
                    self._waited += loop.time() - self._wait_start
                if message["type"] != "http.request":
                    self.interrupt(errors.ERR_UNEXPECTED_EOF("the client closed the connection"))
                    return
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if not more:
                    self.complete = True
                if chunk:
                    room = self.limit - self.received
                    if len(chunk) > room:
                        chunk = chunk[:room]
                        self.complete = False
                        self.interrupt(errors.ERR_UPLOAD_SIZE_EXCEEDED())
                        if not chunk:
                            return
                    self.received += len(chunk)
                    yield chunk
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._task = None


class BodyChunks:
    """:meth:`RequestBody.chunks`: an async iterator of the body's chunks, which can also splice (see
    :meth:`RequestBody.splice_into`) for a store that writes to a file descriptor."""

    __slots__ = ("_body", "_chunks")

    def __init__(self, body: RequestBody) -> None:
        self._body = body
        self._chunks = body._iter_chunks()

    def __aiter__(self) -> BodyChunks:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    def splice_into(
        self, fd: int, offset: int, done: Callable[[int], None], pool: Pool | None = None
    ) -> Awaitable[bool]:
        return self._body.splice_into(fd, offset, done, pool)
