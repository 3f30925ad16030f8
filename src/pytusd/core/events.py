"""Upload events for the application embedding pytusd: streams and callbacks.

Two things live here, both the Python counterparts of parts of tusd's handler package:

**Event streams** (tusd's ``CreatedUploads``, ``UploadProgress``, ``CompleteUploads`` and ``TerminatedUploads``
channels). Every :class:`pytusd.TusApp` has an :class:`Events` hub at ``app.events``; subscribe and iterate::

    async with app.events.completed() as uploads:       # or app.events.subscribe("completed", maxsize=100)
        async for event in uploads:
            print(event.upload.id, event.upload.size, event.request.remote_addr)

Events are published at the same moments as the notification hooks fire, and carry the same data (the upload's
:class:`~pytusd.UploadInfo` and the request's method, URI, remote address and headers):

===============  ==================  =====================================================================
kind             hook                published when
===============  ==================  =====================================================================
``created``      ``post-create``     an upload was created (POST; also the IETF draft's creation)
``progress``     ``post-receive``    while a request body streams in, every ``progress_interval`` seconds in
                                     which bytes arrived, and once when the request's bytes are stored
``completed``    ``post-finish``     the last byte is stored and the store finished the upload (also finals
                                     completed by concatenation)
``terminated``   ``post-terminate``  an upload was deleted (DELETE, or stopped by a post-receive hook)
===============  ==================  =====================================================================

Streams work with or without hooks configured, and nothing is recorded while nobody subscribes.

*Backpressure never blocks an upload.* Publishing is synchronous, O(1) per subscription: each has its own bounded
queue (``maxsize``, default 1000). When a slow consumer's queue is full, the **oldest** waiting event of that
subscription is dropped to make room for the new one, and ``subscription.dropped`` counts how many were lost. A
consumer therefore always sees the most recent events and can tell (``dropped > 0``) that it missed some, e.g. to
rescan the store. Other subscriptions are unaffected. Events are process-local: with several server processes,
each process publishes the events of the requests it serves.

**Callbacks** (tusd's ``PreUploadCreateCallback`` and ``PreFinishResponseCallback``): ``Config(pre_create=...,
pre_finish=...)`` take an async callable receiving an :class:`UploadEvent` and returning None (carry on), a
:class:`~pytusd.HookResponse` or a dict in tusd's hook-response JSON shape, or raising :class:`~pytusd.TusError`.
They have the effects of the pre-create and pre-finish hooks (see :data:`PreCreateCallback`,
:data:`PreFinishCallback`) and run after the configured hooks for the same event: their answers go through the
same :class:`~pytusd.HookResponse` handling (``apply_pre_create``, ``merge_hook_response``), but they are not hook
backends: they receive typed objects rather than tusd's JSON, a raised TusError is answered as it is (a failing
hook is a 500), and they are not counted in ``tusd_hook_*`` metrics. They can be combined with any ``hooks``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Union, cast, get_args

from ..errors import TusError
from ..hooks.base import HookResponse
from ..info import UploadInfo

EventKind = Literal["created", "progress", "completed", "terminated"]
"""The kinds of :class:`UploadEvent` a subscription can ask for."""

EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)

#: The hook each event kind corresponds to (they fire at the same places).
HOOK_OF_EVENT: Mapping[EventKind, str] = {
    "created": "post-create",
    "progress": "post-receive",
    "completed": "post-finish",
    "terminated": "post-terminate",
}

DEFAULT_MAXSIZE = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class HTTPRequestInfo:
    """The request behind an event, as tusd's ``HTTPRequest`` (and the ``HTTPRequest`` of a hook's payload)."""

    method: str
    """The HTTP method, after ``X-HTTP-Method-Override`` (``POST``, ``PATCH``, ...)."""
    uri: str
    """The request's path and query string, as received (mount point included)."""
    remote_addr: str
    """``host:port`` of the client as the ASGI server saw it (a proxy's, when behind one)."""
    headers: Mapping[str, tuple[str, ...]]
    """The request headers in canonical case (``Upload-Length``), each with all its values."""
    request_id: str | None = None
    """The request's ID (its ``X-Request-ID``, or the one pytusd made for it), as in the logs."""
    state: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The ASGI scope's ``state`` (Starlette's and FastAPI's ``request.state``): what your routes or their
    dependencies stored for this request (``request.state.user = ...``) reaches callbacks and events here."""

    def header(self, name: str) -> str | None:
        """The first value of a header, looked up case-insensitively; None when absent."""
        wanted = name.lower()
        for key, values in self.headers.items():
            if key.lower() == wanted and values:
                return values[0]
        return None

    @classmethod
    def from_hook_http(
        cls, http: Mapping[str, Any], request_id: str | None = None, state: Mapping[str, Any] | None = None
    ) -> HTTPRequestInfo:
        """From the ``HTTPRequest`` object of a hook payload (``Method``, ``URI``, ``RemoteAddr``, ``Header``)."""
        header = http.get("Header") or {}
        return cls(
            method=str(http.get("Method", "")),
            uri=str(http.get("URI", "")),
            remote_addr=str(http.get("RemoteAddr", "")),
            headers={str(k): tuple(str(v) for v in values) for k, values in header.items()},
            request_id=request_id,
            state=state if state is not None else {},
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UploadEvent:
    """One thing that happened to an upload, with the request that caused it (tusd's ``HookEvent``).

    ``kind`` is an :data:`EventKind` for streamed events, or ``"pre-create"`` / ``"pre-finish"`` for the event a
    callback receives.
    """

    kind: str
    upload: UploadInfo
    """The upload's state at that moment (for ``progress``: ``offset`` counts the bytes received so far)."""
    request: HTTPRequestInfo
    """The request that caused the event."""


class Subscription:
    """A bounded stream of :class:`UploadEvent`: iterate it with ``async for``.

    Created by :meth:`Events.subscribe` (or :meth:`Events.created` and friends). The queue holds at most ``maxsize``
    events; when it is full, the oldest waiting event is dropped for the new one and :attr:`dropped` grows.
    Iteration ends after :meth:`close` (also called when an ``async with`` block ends), once the events already
    queued have been delivered. Not thread-safe: use it on the event loop that serves the app.
    """

    def __init__(self, hub: Events, kinds: frozenset[EventKind], maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.kinds = kinds
        """The event kinds this subscription receives."""
        self.maxsize = maxsize
        self.dropped = 0
        """How many events were dropped because the queue was full."""
        self._hub = hub
        self._queue: collections.deque[UploadEvent] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def __repr__(self) -> str:
        kinds = ",".join(sorted(self.kinds))
        return f"<Subscription {kinds} queued={len(self._queue)} dropped={self.dropped}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """How many events wait to be read."""
        return len(self._queue)

    def put(self, event: UploadEvent) -> None:
        """Queue an event without ever waiting: when full, drop the oldest queued event (counted in ``dropped``)."""
        if self._closed:
            return
        if len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wake()

    def get_nowait(self) -> UploadEvent | None:
        """The next queued event, or None when none is waiting."""
        return self._queue.popleft() if self._queue else None

    async def get(self) -> UploadEvent:
        """Wait for the next event; raises :class:`StopAsyncIteration` once closed and drained."""
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        return self._queue.popleft()

    def close(self) -> None:
        """Stop receiving events; iteration ends after the ones already queued."""
        if not self._closed:
            self._closed = True
            self._hub._unsubscribe(self)
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[UploadEvent]:
        return self

    async def __anext__(self) -> UploadEvent:
        return await self.get()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Events:
    """The event hub of one app (``app.events``): hands every published event to the matching subscriptions.

    ``progress_interval`` is how often (seconds) a streaming request body reports ``progress`` when no
    ``post-receive`` hook sets the pace (with one, the hooks' ``progress_interval`` is used for both).
    """

    def __init__(self, progress_interval: float = 1.0) -> None:
        if progress_interval <= 0:
            raise ValueError("progress_interval must be positive")
        self.progress_interval = progress_interval
        self._subscriptions: list[Subscription] = []

    def __repr__(self) -> str:
        return f"<pytusd Events subscriptions={len(self._subscriptions)}>"

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The open subscriptions."""
        return tuple(self._subscriptions)

    def subscribe(self, *kinds: EventKind, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new subscription to the given kinds (all four when none is given).

        >>> sub = app.events.subscribe("created", "completed", maxsize=100)
        """
        wanted: Iterable[str] = kinds or EVENT_KINDS
        unknown = sorted(set(wanted) - set(EVENT_KINDS))
        if unknown:
            raise ValueError(f"unknown event kinds: {', '.join(unknown)} (known: {', '.join(EVENT_KINDS)})")
        subscription = Subscription(self, frozenset(cast(Iterable[EventKind], wanted)), maxsize)
        self._subscriptions.append(subscription)
        return subscription

    def created(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """Uploads created (tusd's ``CreatedUploads``)."""
        return self.subscribe("created", maxsize=maxsize)

    def progress(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """Progress of uploads receiving data (tusd's ``UploadProgress``)."""
        return self.subscribe("progress", maxsize=maxsize)

    def completed(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """Uploads whose last byte is stored (tusd's ``CompleteUploads``)."""
        return self.subscribe("completed", maxsize=maxsize)

    def terminated(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """Uploads deleted (tusd's ``TerminatedUploads``)."""
        return self.subscribe("terminated", maxsize=maxsize)

    def wants(self, kind: EventKind) -> bool:
        """Whether any open subscription receives ``kind`` (the app skips building events nobody reads)."""
        return any(kind in subscription.kinds for subscription in self._subscriptions)

    def publish(self, event: UploadEvent) -> None:
        """Hand ``event`` to every subscription of its kind. Never waits, never raises for a slow consumer."""
        for subscription in self._subscriptions:
            if event.kind in subscription.kinds:
                subscription.put(event)

    def close(self) -> None:
        """Close every subscription (their iterations end after what is queued)."""
        for subscription in list(self._subscriptions):
            subscription.close()

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


# -- callbacks ------------------------------------------------------------------------------------------------------

CallbackResult = Union[HookResponse, Mapping[str, Any], None]
"""What a callback may return: None (carry on), a :class:`~pytusd.HookResponse`, or a dict shaped like tusd's
hook response JSON (``{"RejectUpload": True, "HTTPResponse": {"StatusCode": 403}}``)."""

PreCreateCallback = Callable[[UploadEvent], Union[Awaitable[CallbackResult], CallbackResult]]
"""``Config.pre_create``: called before an upload is created (tusd's ``PreUploadCreateCallback``).

It receives an :class:`UploadEvent` of kind ``"pre-create"`` (``upload.id`` is empty unless a hook chose one) and
may

* return None: the upload is created;
* reject it: raise a :class:`~pytusd.TusError` (sent as it is), or return
  ``HookResponse(reject_upload=True, status_code=403, body="...")`` (400 ``ERR_UPLOAD_REJECTED`` unless a status
  is given);
* change it: return ``HookResponse(change_id=..., change_metadata=..., change_storage=...)``;
* add to the 201 response: ``status_code``, ``body`` and ``headers`` of the returned HookResponse.
"""

PreFinishCallback = Callable[[UploadEvent], Union[Awaitable[CallbackResult], CallbackResult]]
"""``Config.pre_finish``: called after the last byte is stored and the store finished the upload, before the
response is sent (tusd's ``PreFinishResponseCallback``).

The returned HookResponse's ``status_code``, ``body`` and ``headers`` shape the response of the request that
completed the upload; a raised :class:`~pytusd.TusError` becomes that response (status, body, headers). The upload
stays complete either way, and the ``completed`` event and post-finish hook still follow.
"""


async def run_callback(
    callback: Callable[[UploadEvent], Any], kind: str, info: UploadInfo, event_request: HTTPRequestInfo
) -> HookResponse:
    """Call a pre-create / pre-finish callback and return its answer as a HookResponse (empty for None)."""
    result = callback(UploadEvent(kind, info, event_request))
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, HookResponse):
        return result
    return HookResponse.from_json(result)


def rejection(error: TusError) -> HookResponse:
    """A raised TusError as the HookResponse with its status, body and headers."""
    headers = {"Content-Type": "text/plain; charset=utf-8", **error.headers}
    return HookResponse(status_code=error.status, body=error.body, headers=headers)


__all__ = [
    "EVENT_KINDS",
    "CallbackResult",
    "EventKind",
    "Events",
    "HTTPRequestInfo",
    "PreCreateCallback",
    "PreFinishCallback",
    "Subscription",
    "UploadEvent",
]
