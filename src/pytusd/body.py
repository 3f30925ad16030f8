"""The request body as a stream of chunks that can be stopped.

:class:`RequestBody` hands ASGI body chunks to a store one by one, never buffering the body. It ends early,
without raising into the store, when

- the client disconnects (ERR_UNEXPECTED_EOF),
- no data arrives for ``network_timeout`` seconds (ERR_READ_TIMEOUT),
- more data arrives than ``limit`` allows (ERR_UPLOAD_SIZE_EXCEEDED, the allowed part is still handed on),
- :meth:`interrupt` is called: another request wants the upload's lock (ERR_UPLOAD_INTERRUPTED), the server shuts
  down (ERR_SERVER_SHUTDOWN), or a hook stops the upload.

The reason is kept in :attr:`error` for the handler to answer with, after the store has stored every byte it was
given. Per chunk, the hot path only records the time; one timer per request checks for silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from . import errors
from .errors import TusError
from .types import Receive


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
        "_last",
        "_timer",
    )

    def __init__(self, receive: Receive, network_timeout: float, limit: int) -> None:
        self._receive = receive
        self._timeout = network_timeout
        self.limit = limit
        self.received = 0
        self.error: TusError | None = None
        self.complete = False  # the client sent the whole body
        self._task: asyncio.Task[object] | None = None
        self._waiting = False
        self._cancelling = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def interrupt(self, error: TusError) -> None:
        """Stop reading as soon as possible; the first reason given is the one reported."""
        if self.error is None:
            self.error = error
        if self._waiting and self._task is not None and not self._cancelling:
            self._cancelling = True
            self._task.cancel()

    def _check_silence(self) -> None:
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last
        if idle >= self._timeout and self._waiting:
            self._timer = None
            self.interrupt(errors.ERR_READ_TIMEOUT())
        else:
            self._timer = loop.call_later(max(self._timeout - idle, 0.001), self._check_silence)

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._last = loop.time()
        self._timer = loop.call_later(self._timeout, self._check_silence)
        receive = self._receive
        more = True
        try:
            while more and self.error is None:
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
                if message["type"] != "http.request":
                    self.interrupt(errors.ERR_UNEXPECTED_EOF("the client closed the connection"))
                    return
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if not more:
                    self.complete = True
                self._last = loop.time()
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
