"""TusApp: the ASGI application.

A request to the uploads' routes goes through one chain, each stage a method here, outermost first:

- errors (:meth:`TusApp._errors`): a :class:`pytusd.TusError` raised anywhere below becomes tusd's error response
  and is counted; anything else is logged and answers 500 ``ERR_INTERNAL_SERVER_ERROR``, never a traceback;
- resources (:meth:`TusApp._resources`): the upload routes, else the upload page, the greeting or 404;
- CORS (:meth:`TusApp._cors`): the origin check and the CORS headers, for the upload routes only;
- router (:meth:`TusApp._router`): pre-access, the protocol (tus 1.0 or the IETF draft), the ``Tus-Resumable``
  check, shutdown, the upload slots, and the method that picks the endpoint;
- endpoint: one flow of :class:`pytusd.core.tus.TusFlows` or :class:`pytusd.core.draft.DraftFlows`.

Around it, :meth:`TusApp._http` gives the request its ID, counts it, traces and logs it; ``/health``, ``/ready``
and ``/metrics`` (:mod:`pytusd.asgi.health`) bypass the chain. Mount it in any ASGI app (FastAPI, Starlette,
Django, Litestar) or let the ``pytusd`` command serve it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from .. import errors
from ..asgitypes import Receive, Scope, Send
from ..core import draft, expiration, grammar, limits
from ..core.config import Config
from ..core.events import Events
from ..core.http import CONNECTIONS_EXTENSION, INFORMATIONAL_EXTENSION, Request, Response
from ..core.tus import TusFlows
from ..errors import TusError
from ..observe import logs, tracing
from ..observe.metrics import Metrics
from ..stores import base
from . import routing
from .health import Health

log = logging.getLogger("pytusd")

GREETING = (
    "Welcome to pytusd\n"
    "=================\n\n"
    "This is a tus resumable-upload server (https://tus.io). Uploads are accepted at {url}.\n"
)


class TusApp:
    """A tus 1.0 server as a plain ASGI application.

    >>> app = TusApp(Config(store=FileStore("./data")))

    It serves ``config.base_path`` (relative to where it is mounted); other paths get 404, except ``/`` which shows
    a greeting when ``config.show_greeting`` is set. Call :meth:`shutdown` (the ``pytusd`` command does so on
    SIGTERM) to end open uploads gracefully: they store what they received and answer 503.

    For the application embedding it:

    - ``app.events`` (:class:`pytusd.Events`): async streams of created, progress, completed and terminated
      uploads (``async with app.events.completed() as uploads: async for event in uploads: ...``);
    - ``app.endpoints`` (:class:`pytusd.Endpoints`): the operations one by one, for your own router;
    - ``app.metrics`` (:class:`pytusd.Metrics`): the Prometheus registry, and ``app.metrics.snapshot()`` to read
      it in-process;
    - ``app.config``: the :class:`pytusd.Config` it was made with.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        # This app's numbers (app.metrics.registry is what config.metrics_path serves) and spans.
        self.metrics = Metrics()
        self.tracing = tracing.Tracing(config.tracer_provider)
        # Event streams of this app's uploads (pytusd.core.events): ``async with app.events.completed() as s: ...``.
        self.events = Events()
        self.handlers = TusFlows(config, self.metrics, self.tracing, self.events)
        # The operations one by one, for applications that route themselves (pytusd.asgi.routing).
        self.endpoints = routing.Endpoints(self)
        if self.handlers.hooks is not None:  # config.hooks, as Config.__post_init__ left it: Hooks or None
            self.handlers.hooks.instrument(self.metrics, self.tracing)
        logs.install_request_id_filter()
        # /health, /ready, /metrics: relative to the mount point like base_path, outside the chain.
        self.health = Health(config, self.metrics, lambda: self.shutting_down)
        self.draft = draft.DraftFlows(self.handlers) if config.enable_experimental_protocol else None
        # tus 1.0's endpoints, by the method the router picks (the draft's are bound per request to its version).
        handlers = self.handlers
        self._tus = _Flows(handlers.options, handlers.create, handlers.head, handlers.patch)
        self._prefix = config.route_prefix
        self._prefix_bare = self._prefix.rstrip("/")
        self._cors_config = config.cors
        self._origin_re = config.cors.origin_pattern
        self._active: set[Request] = set()
        # --max-concurrent-uploads / --max-uploads-per-client: slots for requests that write (pytusd.core.limits).
        self.upload_slots = (
            limits.UploadSlots(config.max_concurrent_uploads, config.max_uploads_per_client, config.behind_proxy,
                               config.retry_after)
            if config.max_concurrent_uploads or config.max_uploads_per_client
            else None
        )
        self.shutting_down = False
        expiring = base.expiring(config.store)
        self.cleaner = (
            expiration.Cleaner(
                expiring, config.locker, self.handlers.expiration, config.expiration_cleanup_interval,
                metrics=self.metrics,
            )
            if expiring is not None and self.handlers.expiration
            else None
        )
        self._background: asyncio.Task[None] | None = None
        # --hooks-durable: every app delivers the outbox's events (pytusd.hooks.outbox), whoever recorded them.
        self.outbox = self.handlers.hooks.outbox if self.handlers.hooks is not None else None
        self._delivery: asyncio.Task[None] | None = None
        base.prepare(config.store)  # e.g. the file store's directory

    def shutdown(self) -> None:
        """Stop taking requests; open uploads store what they have and answer 503 ERR_SERVER_SHUTDOWN."""
        self.shutting_down = True
        if self._background is not None:
            self._background.cancel()
            self._background = None
        if self._delivery is not None:
            self._delivery.cancel()  # an event being delivered stays in the outbox: delivered again later
            self._delivery = None
        for request in list(self._active):
            request.interrupt(errors.ERR_SERVER_SHUTDOWN())

    @property
    def active_requests(self) -> int:
        return len(self._active)

    def _start_background(self) -> None:
        # Started by the first lifespan event or request: a mounted sub-app may never see lifespan events.
        if self.cleaner is not None and self._background is None and not self.shutting_down:
            self._background = asyncio.get_running_loop().create_task(self.cleaner.run())
        if self.outbox is not None and self._delivery is None and not self.shutting_down:
            self._delivery = asyncio.get_running_loop().create_task(self.outbox.run())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.cleaner is not None and self._background is None) or (
            self.outbox is not None and self._delivery is None
        ):
            self._start_background()
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdown()
                self.metrics.process_exited()
                await self.tracing.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive, self.config.network_timeout, self.config.min_body_rate)
        if INFORMATIONAL_EXTENSION in scope.get("extensions", ()):
            request.interim = send
        # The request's ID: in its response, its log lines and its hooks' payloads.
        request_id = logs.request_id_from(request.headers.get("x-request-id"))
        token = logs.request_id_var.set(request_id)
        traced = self.tracing.for_request()
        try:
            # A request reaching us through one of self.endpoints is an upload route wherever it was routed.
            endpoint = None if routing.OPERATION_KEY in scope else self.health.endpoint(request.path)
            if endpoint is not None:
                await self.health.serve(endpoint, request, send, request_id)
            else:
                await self._tus_http(request, send, request_id, started)
        finally:
            self.tracing.request_done(traced)
            logs.request_id_var.reset(token)

    def _in_routes(self, path: str) -> bool:
        """Whether the path is the uploads' (counted in tusd_requests_total and tusd_errors_total, as in tusd)."""
        return path.startswith(self._prefix) or path == self._prefix_bare

    def _counted(self, request: Request) -> bool:
        """Whether the request is for the uploads' routes: under the prefix, or served by one of the endpoints."""
        return routing.OPERATION_KEY in request.scope or self._in_routes(request.path)

    async def _tus_http(self, request: Request, send: Send, request_id: str, started: float) -> None:
        metrics = self.metrics
        in_routes = self._counted(request)
        if in_routes:
            metrics.request(request.method)
        # pytusd's own server counts connections (and says so in the scope); under another server, requests count
        counts_requests = CONNECTIONS_EXTENSION not in request.scope.get("extensions", ())
        if counts_requests:
            metrics.connection_opened()
        try:
            span_context = tracing.NOTHING
            if self.tracing.active:
                route = self._route_name(request) if in_routes else ""
                attributes = {"http.method": request.method, "http.request.method": request.method,
                              "url.path": request.path, "pytusd.request_id": request_id}
                if route:
                    attributes["http.route"] = route
                span_context = self.tracing.request_span(
                    f"{request.method} {route}" if route else request.method, request.headers, attributes
                )
            with span_context as span:
                self._active.add(request)
                try:
                    response, error = await self._errors(request)
                finally:
                    self._active.discard(request)
                response.headers["X-Request-ID"] = request_id
                if not request.body_consumed:
                    # The client is still sending a body we will not read: end the connection rather than drain it.
                    response.headers["Connection"] = "close"
                try:
                    await response.send(send, head_only=request.method == "HEAD")
                finally:
                    upload_id = request.upload_id or self._created_id(response)
                    if span is not None:
                        attributes = {"tus.upload_id": upload_id or None, "tus.offset": _offset(request, response)}
                        tracing.finish_request(span, response.status, attributes)
                    if log.isEnabledFor(logging.INFO):
                        duration = round((time.perf_counter() - started) * 1000, 1)
                        log.info(
                            "%s %s -> %d (%.1f ms)",
                            request.method,
                            request.path,
                            response.status,
                            duration,
                            extra=logs.fields(
                                event="RequestCompleted", method=request.method, path=request.path,
                                status=response.status, duration_ms=duration, upload_id=upload_id or None,
                                error=error,
                            ),
                        )
        finally:
            if counts_requests:
                metrics.connection_closed()

    def _route_name(self, request: Request) -> str:
        """The route as a template, for span names: ``/files/{id}`` or ``/files/``."""
        base = request.mount_prefix + self._prefix
        return base + "{id}" if request.path[len(self._prefix) :].strip("/") else base

    def _created_id(self, response: Response) -> str:
        location = response.headers.get("Location")
        if response.status != 201 or not location or self._prefix not in location:
            return ""
        return location.rsplit(self._prefix, 1)[1]

    async def check_ready(self) -> tuple[bool, dict[str, str]]:
        """Whether this app can serve uploads, as ``/ready`` answers (:meth:`pytusd.asgi.health.Health.check_ready`)."""
        return await self.health.check_ready()

    # -- the chain: errors -> resources -> CORS -> router -> endpoint -----------------------------------------------

    async def _errors(self, request: Request) -> tuple[Response, str | None]:
        """The response, and the tus error code when it is an error (counted in tusd_errors_total)."""
        headers: dict[str, str] = {"Tus-Resumable": grammar.TUS_VERSION, "X-Content-Type-Options": "nosniff"}
        error: TusError | None = None
        try:
            response = await self._resources(request, headers)
        except TusError as exc:
            error = exc
            response = Response.from_error(exc)
            if request.method == "HEAD":
                response.body = b""
            if exc.is_(errors.ERR_UNSUPPORTED_VERSION):
                headers["Tus-Version"] = grammar.TUS_VERSION
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            error = errors.ERR_INTERNAL_SERVER_ERROR()
            response = Response.from_error(error)
        headers.update(response.headers)
        response.headers = headers
        if error is not None and self._counted(request):
            self.metrics.error(error.status, error.code)
        return response, error.code if error is not None else None

    async def _resources(self, request: Request, headers: dict[str, str]) -> Response:
        """The upload routes (their upload ID in ``request.upload_id``), else the page, the greeting or 404."""
        path = request.path
        operation: routing.Operation | None = request.scope.get(routing.OPERATION_KEY)
        if operation is not None:  # routed by the application to one of self.endpoints
            request.upload_id = operation.upload_id(request, self._prefix)
        elif path.startswith(self._prefix):
            request.upload_id = path[len(self._prefix) :].strip("/")
        elif path == self._prefix_bare:
            request.upload_id = ""
        else:
            if self.config.upload_page and request.method in ("GET", "HEAD"):
                from . import page  # the upload page at / and its files (pytusd.asgi.page)

                if (answer := page.respond(request, self.config)) is not None:
                    return answer
            if path == "/" and self.config.show_greeting and request.method in ("GET", "HEAD"):
                url = self.handlers.upload_url(request, "")
                body = GREETING.format(url=url).encode()
                return Response(200, {"Content-Type": "text/plain; charset=utf-8"}, body)
            raise errors.ERR_UPLOAD_NOT_FOUND("nothing here")
        return await self._cors(request, headers)

    async def _cors(self, request: Request, headers: dict[str, str]) -> Response:
        """CORS for the upload routes: a request with a disallowed Origin goes no further (403)."""
        cors = self._cors_config
        if not cors.disable and (origin := request.headers.get("origin")):
            # The Origin is reflected in a header: one that is not a serialized origin is never allowed.
            if not grammar.is_origin(origin) or not self._origin_re.search(origin):
                raise errors.ERR_ORIGIN_NOT_ALLOWED()
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
            if cors.allow_credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
            if request.method == "OPTIONS":
                headers["Access-Control-Allow-Methods"] = cors.methods_header
                headers["Access-Control-Allow-Headers"] = cors.headers_header
                headers["Access-Control-Max-Age"] = cors.max_age
            else:
                headers["Access-Control-Expose-Headers"] = cors.expose_header
        return await self._router(request, headers)

    async def _router(self, request: Request, headers: dict[str, str]) -> Response:
        """The checks every upload request passes, in this order, then the endpoint its protocol and method pick."""
        method, upload_id = request.method, request.upload_id
        operation: routing.Operation | None = request.scope.get(routing.OPERATION_KEY)
        if operation is not None:
            operation.check_method(method)  # 405 with Allow for a method the endpoint does not serve
        if upload_id and method in ("HEAD", "PATCH", "GET", "DELETE") and self.handlers.policy.checks_access:
            # The access rule (pre-access), for either protocol; concatenation applies it to the partials it reads.
            await self.handlers.policy.access(request, self.handlers.upload_id_of(request))
        version = draft.interop_version(request) if self.draft is not None else None
        if version is None:
            flows = self._tus
        else:
            del headers["Tus-Resumable"]  # the draft has no Tus-Resumable, in requests or responses
            flows = self._draft_flows(version)
        if method == "OPTIONS":
            return flows.options(request)
        if version is None and method not in ("GET", "HEAD"):
            if request.headers.get("tus-resumable") != grammar.TUS_VERSION:
                raise errors.ERR_UNSUPPORTED_VERSION()
        if self.shutting_down:
            raise errors.ERR_SERVER_SHUTDOWN()
        if self.upload_slots is not None and self.upload_slots.applies(request):
            with self.upload_slots.slot(request):  # 503/429 with Retry-After when none is free; the body stays unread
                return await self._endpoint(request, flows)
        return await self._endpoint(request, flows)

    def _draft_flows(self, version: int) -> _Flows:
        flows = self.draft
        assert flows is not None  # only when the draft is enabled (interop_version is None otherwise)
        return _Flows(
            lambda request: flows.options(request, version),
            lambda request: flows.create(request, version),
            lambda request: flows.head(request, version),
            lambda request: flows.append(request, version),
        )

    async def _endpoint(self, request: Request, flows: _Flows) -> Response:
        """The method picks the endpoint; downloads and termination are the same for both protocols."""
        handlers, method = self.handlers, request.method
        if not request.upload_id:
            if method == "POST":
                return await flows.create(request)
            raise errors.ERR_METHOD_NOT_ALLOWED(headers={"Allow": "POST"})
        if method == "HEAD":
            return await flows.head(request)
        if method == "PATCH":
            return await flows.append(request)
        if method == "GET" and not self.config.disable_download:
            return await handlers.get(request)
        if method == "DELETE" and handlers.can_terminate:
            return await handlers.delete(request)
        raise self._not_allowed()

    def _not_allowed(self) -> errors.TusError:
        allowed = ["HEAD", "PATCH"]
        if not self.config.disable_download:
            allowed.insert(0, "GET")
        if self.handlers.can_terminate:
            allowed.append("DELETE")
        return errors.ERR_METHOD_NOT_ALLOWED(headers={"Allow": ", ".join(allowed)})


Flow = Callable[[Request], Awaitable[Response]]


@dataclasses.dataclass(frozen=True)
class _Flows:
    """The endpoints of one protocol that differ between tus 1.0 and the draft."""

    options: Callable[[Request], Response]
    create: Flow
    head: Flow
    append: Flow


def _offset(request: Request, response: Response) -> int | None:
    """The upload's offset after the request (its response's Upload-Offset, else the one the request named)."""
    value = response.headers.get("Upload-Offset") or request.headers.get("upload-offset")
    return grammar.parse_non_negative_int(value) if value else None
