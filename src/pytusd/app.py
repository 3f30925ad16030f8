"""TusApp: the ASGI application.

Routing, CORS, X-HTTP-Method-Override, the Tus-Resumable check and error rendering live here, once; the flows in
:mod:`.handlers` do the work. Mount it in any ASGI app (FastAPI, Starlette, Django, Litestar) or let the ``pytusd``
command serve it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from . import draft, errors, expiration, protocol
from .config import Config
from .errors import TusError
from .handlers import Handlers
from .http import Request, Response
from .types import Receive, Scope, Send

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
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.handlers = Handlers(config)
        self.draft = draft.DraftFlows(self.handlers) if config.enable_experimental_protocol else None
        self._prefix = config.route_prefix
        self._prefix_bare = self._prefix.rstrip("/")
        self._cors = config.cors
        self._origin_re = config.cors.origin_pattern
        self._active: set[Request] = set()
        self.shutting_down = False
        self.cleaner = (
            expiration.Cleaner(config.store, config.locker, self.handlers.expiration, config.expiration_cleanup_interval)  # type: ignore[arg-type]
            if self.handlers.expiration
            else None
        )
        self._background: asyncio.Task[None] | None = None
        ensure = getattr(config.store, "ensure_directory", None)
        if ensure is not None:
            ensure()

    def shutdown(self) -> None:
        """Stop taking requests; open uploads store what they have and answer 503 ERR_SERVER_SHUTDOWN."""
        self.shutting_down = True
        if self._background is not None:
            self._background.cancel()
            self._background = None
        for request in list(self._active):
            request.interrupt(errors.ERR_SERVER_SHUTDOWN())

    @property
    def active_requests(self) -> int:
        return len(self._active)

    def _start_background(self) -> None:
        # Started by the first lifespan event or request: a mounted sub-app may never see lifespan events.
        if self.cleaner is not None and self._background is None and not self.shutting_down:
            self._background = asyncio.get_running_loop().create_task(self.cleaner.run())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cleaner is not None and self._background is None:
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
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive, self.config.network_timeout)
        self._active.add(request)
        try:
            response = await self._respond(request)
        finally:
            self._active.discard(request)
        if not request.body_consumed:
            # The client is still sending a body we will not read: end the connection rather than drain it.
            response.headers["Connection"] = "close"
        try:
            await response.send(send, head_only=request.method == "HEAD")
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s -> %d (%.1f ms)",
                    request.method,
                    request.path,
                    response.status,
                    (time.perf_counter() - started) * 1000,
                )

    async def _respond(self, request: Request) -> Response:
        headers: dict[str, str] = {"Tus-Resumable": protocol.TUS_VERSION, "X-Content-Type-Options": "nosniff"}
        try:
            response = await self._route(request, headers)
        except TusError as exc:
            response = Response.from_error(exc)
            if request.method == "HEAD":
                response.body = b""
            if exc.status == 412 and exc.code == "ERR_UNSUPPORTED_VERSION":
                headers["Tus-Version"] = protocol.TUS_VERSION
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = Response.from_error(errors.ERR_INTERNAL_SERVER_ERROR())
        headers.update(response.headers)
        response.headers = headers
        return response

    async def _route(self, request: Request, headers: dict[str, str]) -> Response:
        path = request.path
        if path.startswith(self._prefix):
            upload_id = path[len(self._prefix) :].strip("/")
        elif path == self._prefix_bare:
            upload_id = ""
        else:
            if path == "/" and self.config.show_greeting and request.method in ("GET", "HEAD"):
                url = self.handlers.upload_url(request, "")
                body = GREETING.format(url=url).encode()
                return Response(200, {"Content-Type": "text/plain; charset=utf-8"}, body)
            raise errors.ERR_UPLOAD_NOT_FOUND("nothing here")
        request.upload_id = upload_id
        method = request.method

        cors = self._cors
        if not cors.disable and (origin := request.headers.get("origin")):
            if not self._origin_re.search(origin):
                raise errors.ERR_ORIGIN_NOT_ALLOWED()
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
            if cors.allow_credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
            if method == "OPTIONS":
                headers["Access-Control-Allow-Methods"] = cors.methods_header
                headers["Access-Control-Allow-Headers"] = cors.headers_header
                headers["Access-Control-Max-Age"] = cors.max_age
            else:
                headers["Access-Control-Expose-Headers"] = cors.expose_header

        if upload_id and method in ("HEAD", "PATCH", "GET", "DELETE"):
            await self.handlers.authorize(request)
        version = draft.interop_version(request) if self.draft is not None else None
        if version is not None:
            del headers["Tus-Resumable"]  # the draft has no Tus-Resumable, in requests or responses
            return await self._route_draft(request, version, upload_id)
        if method == "OPTIONS":
            return self.handlers.options(request)
        if method not in ("GET", "HEAD") and request.headers.get("tus-resumable") != protocol.TUS_VERSION:
            raise errors.ERR_UNSUPPORTED_VERSION()
        if self.shutting_down:
            raise errors.ERR_SERVER_SHUTDOWN()

        handlers = self.handlers
        if not upload_id:
            if method == "POST":
                return await handlers.create(request)
            raise errors.ERR_METHOD_NOT_ALLOWED(headers={"Allow": "POST"})
        if method == "HEAD":
            return await handlers.head(request)
        if method == "PATCH":
            return await handlers.patch(request)
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

    async def _route_draft(self, request: Request, version: int, upload_id: str) -> Response:
        """The IETF resumable-upload draft: same resources, the draft's headers and statuses."""
        flows, method = self.draft, request.method
        assert flows is not None
        if method == "OPTIONS":
            return flows.options(request, version)
        if self.shutting_down:
            raise errors.ERR_SERVER_SHUTDOWN()
        if not upload_id:
            if method == "POST":
                return await flows.create(request, version)
            raise errors.ERR_METHOD_NOT_ALLOWED(headers={"Allow": "POST"})
        if method == "HEAD":
            return await flows.head(request, version)
        if method == "PATCH":
            return await flows.append(request, version)
        if method == "GET" and not self.config.disable_download:
            return await self.handlers.get(request)
        if method == "DELETE" and self.handlers.can_terminate:
            return await self.handlers.delete(request)
        raise self._not_allowed()
