"""The hook dispatcher and tusd's HookRequest / HookResponse JSON."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from .. import errors
from ..hooktypes import HOOK_TYPES
from ..info import UploadInfo
from ..observe import logs, tracing
from ..observe.metrics import Metrics
from .outbox import DURABLE_HOOKS, Event, Outbox

log = logging.getLogger("pytusd.hooks")

BLOCKING_HOOKS = frozenset({"pre-create", "pre-finish", "pre-terminate", "pre-access"})
_NO_SPAN = contextlib.nullcontext()
# What a hook may put in a response header: a token name and a field value (RFC 9110: visible characters, SP, HTAB,
# obs-text), which is what uvicorn will send and Latin-1 can encode.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
DEFAULT_ENABLED_HOOKS = ("pre-create", "post-create", "post-receive", "post-terminate", "post-finish")

# Header fields a hook request never takes from the client's request. pytusd builds that request: what frames or
# routes it (Go's HTTP client, tusd's, writes those from the request itself, never from its header map) and what
# pytusd sets on it (tusd too sets Content-Type after forwarding) is pytusd's alone.
NEVER_FORWARDED = frozenset({
    "host", "content-type", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "expect", "hook-name", "idempotency-key", "x-request-id", "traceparent", "tracestate", "baggage",
})


def may_forward(name: str) -> bool:
    """Whether a client's header may be passed on to a hook: a token name, not one of :data:`NEVER_FORWARDED`
    and no ``Proxy-*`` field."""
    lowered = name.lower()
    return (_HEADER_NAME.fullmatch(name) is not None and lowered not in NEVER_FORWARDED
            and not lowered.startswith("proxy-"))


def forwarded_header_names(names: Iterable[str]) -> list[str]:
    """A backend's ``forward_headers`` (``--hooks-<backend>-forward-headers``, split at commas): the names given,
    stripped; the ones :func:`may_forward` refuses are logged once, here, as never forwarded."""
    names = [name.strip() for name in names if name.strip()]
    never = [name for name in names if not may_forward(name)]
    if never:
        log.warning("hook requests never carry these client headers (pytusd sets or frames them itself, or they are "
                    "not header names): %s", ", ".join(never))
    return names


def hook_request_headers(
    own: Mapping[str, str], incoming: Mapping[str, Iterable[str]] | None = None, forward: Iterable[str] = ()
) -> dict[str, str]:
    """The header fields of a request pytusd sends to a hook, by one rule for every backend.

    ``incoming`` (the client request's fields, name -> values, as in a hook payload) contributes the fields named in
    ``forward``, matched without regard to case, that :func:`may_forward` allows; their values are joined with
    ``", "``, and a value that could not travel in a header (CR, LF, NUL or another control character) is dropped,
    not sent. ``own`` (pytusd's fields) come last and cannot be replaced: a name is sent once, in one spelling.
    """
    headers: dict[str, str] = {}
    if incoming is not None:
        values_of: dict[str, list[str]] = {}
        for name, values in incoming.items():
            values_of.setdefault(str(name).lower(), []).extend(str(v) for v in values)
        for name in forward:
            name = name.strip()
            key = name.lower()
            if not may_forward(name) or any(k.lower() == key for k in headers):
                continue
            values = [v.strip(" \t") for v in values_of.get(key, ())]
            values = [v for v in values if v and _HEADER_VALUE.fullmatch(v)]
            if values:
                headers[name] = ", ".join(values)
    for name, value in own.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            continue  # pytusd's own values are valid; this keeps the rule whole
        for key in [k for k in headers if k.lower() == name.lower()]:
            del headers[key]
        headers[name] = value
    return headers


def hook_request(hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> dict[str, Any]:
    """tusd's HookRequest: ``{"Type", "Event": {"Upload": FileInfo, "HTTPRequest": {...}}}``."""
    return {"Type": hook_type, "Event": {"Upload": info.to_json_dict(), "HTTPRequest": dict(http)}}


def decode_answer(raw: bytes, source: str) -> Any:
    """A hook's raw answer as JSON: None when empty, an error naming ``source`` when it is not JSON."""
    text = raw.decode(errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source} answered something that is not JSON: {text[:200]!r}") from exc


def _lower_keys(value: Any) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, Mapping) else {}


@dataclasses.dataclass
class HookResponse:
    """What a hook answered. Field names are read case-insensitively, as tusd's Go decoder does."""

    status_code: int = 0
    body: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    reject_upload: bool = False
    reject_termination: bool = False
    stop_upload: bool = False
    change_id: str = ""
    change_metadata: dict[str, str] | None = None
    change_storage: dict[str, str] | None = None

    @classmethod
    def from_json(cls, data: Any) -> HookResponse:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("a hook response must be a JSON object")
        fields = _lower_keys(data)
        http = _lower_keys(fields.get("httpresponse"))
        changes = _lower_keys(fields.get("changefileinfo"))
        status = http.get("statuscode") or 0
        if not isinstance(status, int) or not (status == 0 or 100 <= status <= 599):
            raise ValueError(f"invalid HTTPResponse.StatusCode {status!r}")
        body = http.get("body")
        headers = {str(k): str(v) for k, v in (http.get("header") or {}).items()}
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
                # Checked here, so a bad header is a failed hook rather than a response that cannot be sent.
                raise ValueError(
                    f"a hook's response header {name[:40]!r} is not a valid HTTP header (a token name, a value of "
                    "Latin-1 text without line breaks or other control characters)"
                )

        def text_map(value: Any) -> dict[str, str] | None:
            if value is None:
                return None
            if not isinstance(value, Mapping):
                raise ValueError("ChangeFileInfo maps must be JSON objects")
            return {str(k): str(v) for k, v in value.items()}

        return cls(
            status_code=status,
            body=None if body in (None, "") else str(body),
            headers=headers,
            reject_upload=bool(fields.get("rejectupload")),
            reject_termination=bool(fields.get("rejecttermination")),
            stop_upload=bool(fields.get("stopupload")),
            change_id=str(changes.get("id") or ""),
            change_metadata=text_map(changes.get("metadata")),
            change_storage=text_map(changes.get("storage")),
        )

    def merge(self, later: HookResponse) -> None:
        """Fold a later backend's answer into this one."""
        self.status_code = later.status_code or self.status_code
        self.body = later.body if later.body is not None else self.body
        self.headers.update(later.headers)
        self.reject_upload = self.reject_upload or later.reject_upload
        self.reject_termination = self.reject_termination or later.reject_termination
        self.stop_upload = self.stop_upload or later.stop_upload
        self.change_id = later.change_id or self.change_id
        if later.change_metadata is not None:
            self.change_metadata = later.change_metadata
        if later.change_storage is not None:
            self.change_storage = later.change_storage

    def error(self, template: errors.TusError) -> errors.TusError:
        """``template`` with this response's status, body and headers merged in (tusd's MergeWith)."""
        return template(
            status=self.status_code or None,
            body=self.body,
            headers=self.headers,
        )


@runtime_checkable
class HookBackend(Protocol):
    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        """Run the hook and return its decoded JSON answer (or None for an empty answer); raise on failure."""
        ...


class HookFailed(Exception):
    pass


class Hooks:
    """Dispatches hook events to one or more backends, each for the events it is bound to.

    ``Hooks(backend, events)`` binds one backend; ``Hooks(bindings=[(file_backend, events), (http_backend, ...)])``
    several. For a blocking event the backends run in the order given and their answers are merged: any rejection
    or stop wins, later statuses, bodies and file-info changes override earlier ones, headers add up.
    """

    def __init__(
        self,
        backend: HookBackend | None = None,
        enabled: Iterable[str] = DEFAULT_ENABLED_HOOKS,
        progress_interval: float = 1.0,
        *,
        bindings: Iterable[tuple[HookBackend, Iterable[str]]] = (),
    ) -> None:
        pairs = ([(backend, enabled)] if backend is not None else []) + list(bindings)
        self.bindings: list[tuple[HookBackend, frozenset[str]]] = []
        for bound, events in pairs:
            events = frozenset(events)
            unknown = sorted(events - set(HOOK_TYPES))
            if unknown:
                raise ValueError(f"unknown hook events: {', '.join(unknown)} (known: {', '.join(HOOK_TYPES)})")
            self.bindings.append((bound, events))
        self.enabled = frozenset().union(*(events for _, events in self.bindings))
        self.progress_interval = progress_interval
        self._metrics: Metrics | None = None  # the app's (see instrument), else one of its own
        self._tracing: tracing.Tracing | None = None
        self._background: set[asyncio.Task[HookResponse | None]] = set()
        # Whether a hook runs for an upload, beyond being enabled (an app with upload profiles sets it: a profile
        # names the hooks of its uploads); None: every enabled hook runs.
        self.allows: Callable[[str, UploadInfo], bool] | None = None
        self.outbox: Outbox | None = None  # --hooks-durable (use_outbox)

    def instrument(self, metrics: Metrics, tracer: tracing.Tracing | None = None) -> None:
        """Count invocations and failures in ``metrics`` (a :class:`pytusd.observe.metrics.Metrics`) and trace hook calls
        with ``tracer``; a TusApp does this with its own. A Hooks object shared by two apps counts in the last."""
        self._metrics = metrics
        self._tracing = tracer
        if self.outbox is not None:
            self.outbox.metrics = metrics

    @property
    def counters(self) -> Metrics:
        if self._metrics is None:
            from ..observe.metrics import Metrics

            self._metrics = Metrics()
        return self._metrics

    @property
    def invocations(self) -> dict[str, int]:
        """Calls per hook type (one per backend bound to the event), from ``tusd_hook_invocations_total``."""
        return self.counters.hook_counts()[0]

    @property
    def failures(self) -> dict[str, int]:
        """Failed calls per hook type, from ``tusd_hook_errors_total``."""
        return self.counters.hook_counts()[1]

    def wants(self, hook_type: str) -> bool:
        return hook_type in self.enabled

    def _request(self, hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> dict[str, Any]:
        request = hook_request(hook_type, info, http)
        request_id = logs.request_id_var.get()
        if request_id is not None:
            # The request's ID (the client's X-Request-ID, or the one pytusd made) travels in the payload.
            header = request["Event"]["HTTPRequest"]
            header["Header"] = {**(header.get("Header") or {}), "X-Request-Id": [request_id]}
        return request

    async def _invoke(self, backend: HookBackend, hook_type: str, request: dict[str, Any], upload_id: str) -> Any:
        """One backend's call, counted and traced; a failure is logged and raised as HookFailed."""
        counters = self.counters
        tracer = self._tracing
        counters.hook_invoked(hook_type)
        span = _NO_SPAN
        if tracer is not None and tracer.active:
            attributes = {"tus.hook.type": hook_type, "tus.hook.backend": type(backend).__name__}
            if upload_id:
                attributes["tus.upload_id"] = upload_id
            span = tracer.span(f"hook {hook_type}", attributes, client=True)
        try:
            with span:
                return HookResponse.from_json(await backend.invoke(hook_type, request))
        except Exception as exc:
            counters.hook_failed(hook_type)
            log.error(
                "%s hook (%r) failed for upload %s: %s", hook_type, backend, upload_id or "(new)", exc,
                extra=logs.fields(event="HookInvocationError", hook=hook_type, upload_id=upload_id or None),
            )
            raise HookFailed(hook_type) from exc

    async def _run(self, hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> HookResponse:
        if self.allows is not None and not self.allows(hook_type, info):
            return HookResponse()  # the upload's rules leave this hook out (pytusd.core.rules, "hooks")
        request = self._request(hook_type, info, http)
        merged = HookResponse()
        for backend, events in self.bindings:
            if hook_type in events:
                merged.merge(await self._invoke(backend, hook_type, request, info.id))
        return merged

    async def call(self, hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> HookResponse:
        """Run a blocking hook. A failing hook fails the request with 500, as in tusd."""
        if hook_type not in self.enabled:
            return HookResponse()
        try:
            return await self._run(hook_type, info, http)
        except HookFailed as exc:
            raise errors.ERR_INTERNAL_SERVER_ERROR(f"{hook_type} hook failed") from exc

    async def observe(self, hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> HookResponse | None:
        """Run a hook whose answer matters but whose failure must not fail the request (post-receive)."""
        if hook_type not in self.enabled:
            return None
        try:
            return await self._run(hook_type, info, http)
        except HookFailed:
            return None

    def fire(self, hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> None:
        """Run a notification hook in the background; its failure is logged and counted, never raised."""
        if hook_type not in self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self.observe(hook_type, info, http))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def use_outbox(self, outbox: Outbox) -> None:
        """Deliver post-create, post-finish and post-terminate through ``outbox`` (``--hooks-durable``): recorded by
        :meth:`notify` before the request answers, delivered by ``outbox.run()`` until acknowledged."""
        self.outbox = outbox
        outbox.deliver = self._deliver_event
        outbox.metrics = self.counters

    async def _deliver_event(self, event: Event) -> None:
        for backend, events in self.bindings:
            if repr(backend) == event.backend and event.hook_type in events:
                await self._invoke(backend, event.hook_type, event.request, event.upload_id)
                return
        raise LookupError(f"no {event.hook_type} hook {event.backend} is configured in this process")

    async def notify(self, hook_type: str, info: UploadInfo, http: Mapping[str, Any]) -> None:
        """A notification hook: recorded in the outbox when there is one (durable events), else :meth:`fire`. An
        outbox that cannot record it is logged and the hook fired once, as without the outbox."""
        if hook_type not in self.enabled:
            return
        if self.outbox is None or hook_type not in DURABLE_HOOKS:
            self.fire(hook_type, info, http)
            return
        if self.allows is not None and not self.allows(hook_type, info):
            return
        request = self._request(hook_type, info, http)
        backends = [repr(backend) for backend, events in self.bindings if hook_type in events]
        try:
            await self.outbox.record(hook_type, info.id, request, backends)
        except Exception as exc:
            log.error("%s event of upload %s could not be recorded in %r (%s); delivered once, not durably",
                      hook_type, info.id, self.outbox, exc,
                      extra=logs.fields(event="HookOutboxError", hook=hook_type, upload_id=info.id))
            self.fire(hook_type, info, http)

    def metrics(self) -> dict[str, dict[str, int]]:
        """The counters under tusd's metric names, per hook type (read from the Prometheus counters)."""
        invocations, failures = self.counters.hook_counts()
        return {"tusd_hook_invocations_total": invocations, "tusd_hook_errors_total": failures}

    async def drain(self) -> None:
        """Wait for background hooks still running (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
