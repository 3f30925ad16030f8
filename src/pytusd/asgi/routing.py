"""The tus endpoints one by one, for applications that route requests themselves (tusd's ``UnroutedHandler``).

A :class:`pytusd.TusApp` routes by itself: mount it and you are done. When your router should decide instead (to
put authentication on the upload routes, to choose the URLs, to add routes of your own next to them), use the
endpoints of ``app.endpoints`` (an :class:`Endpoints`). Each is a small ASGI application serving one operation,
and runs everything a mounted TusApp does for it: CORS headers, the ``Tus-Resumable`` check, pre-access and the
other hooks, callbacks, events, metrics, request IDs, logs and tracing.

=====================  =========  ==========================  ==================================
endpoint               method     path                        tusd
=====================  =========  ==========================  ==================================
``endpoints.create``   POST       ``base_path``               ``PostFile``
``endpoints.head``     HEAD       ``base_path{upload_id}``    ``HeadFile``
``endpoints.patch``    PATCH      ``base_path{upload_id}``    ``PatchFile``
``endpoints.get``      GET, HEAD  ``base_path{upload_id}``    ``GetFile`` (HEAD is served as head)
``endpoints.delete``   DELETE     ``base_path{upload_id}``    ``DelFile``
``endpoints.options``  OPTIONS    both                        CORS preflight and tus discovery
=====================  =========  ==========================  ==================================

The upload ID comes from the path parameter ``upload_id`` (``scope["path_params"]``, which Starlette and FastAPI
set), else from the path below ``config.base_path``. IDs may contain ``/`` (a pre-create hook or callback may
choose ``user/123``): declare the parameter as ``{upload_id:path}``. ``config.base_path`` must be the path of your
creation route, since upload URLs (``Location``) are built from it.

Starlette, the endpoints as routes::

    routes = [
        Route("/files/", tus.endpoints.create, methods=["POST"]),
        Route("/files/", tus.endpoints.options, methods=["OPTIONS"]),
        Route("/files/{upload_id:path}", tus.endpoints.head, methods=["HEAD"]),
        Route("/files/{upload_id:path}", tus.endpoints.patch, methods=["PATCH"]),
        Route("/files/{upload_id:path}", tus.endpoints.get, methods=["GET"]),
        Route("/files/{upload_id:path}", tus.endpoints.delete, methods=["DELETE"]),
        Route("/files/{upload_id:path}", tus.endpoints.options, methods=["OPTIONS"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(MethodOverrideMiddleware)])

FastAPI, path operations with their own dependencies: return ``endpoint.response()``, a Starlette response that
serves the request when FastAPI sends it (after your dependencies ran; the body is read by pytusd, as a stream)::

    @api.patch("/files/{upload_id:path}")
    async def upload_chunk(upload_id: str, user: User = Depends(current_user)) -> Response:
        return tus.endpoints.patch.response()

Keeping CORS and ``X-HTTP-Method-Override`` working when you route:

* CORS: every endpoint adds pytusd's CORS headers (``config.cors``) itself; route ``OPTIONS`` of both paths to
  ``endpoints.options`` (without authentication: browsers send preflights without credentials). Or turn pytusd's
  CORS off (``CorsConfig(disable=True)``) and let your framework's CORS middleware do it, allowing and exposing
  :data:`pytusd.core.grammar.CORS_ALLOW_HEADERS` and :data:`pytusd.core.grammar.CORS_EXPOSE_HEADERS`.
* Method override: a client that cannot send PATCH or DELETE sends ``POST`` with ``X-HTTP-Method-Override``, which
  your router would route as a POST. Wrap the router in :class:`MethodOverrideMiddleware` so it sees the real
  method (Starlette ``Middleware(MethodOverrideMiddleware)``, FastAPI ``app.add_middleware(...)``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import errors
from ..asgitypes import ASGIApp, Receive, Scope, Send
from ..core import grammar

if TYPE_CHECKING:
    from starlette.responses import Response as StarletteResponse

    from ..core.http import Request

OPERATION_KEY = "pytusd.operation"
"""The ASGI scope key under which an endpoint tells its TusApp which operation it serves."""

DEFAULT_PATH_PARAM = "upload_id"


@dataclasses.dataclass(frozen=True)
class Operation:
    """What one endpoint serves: its name, the methods it accepts, and whether its route names an upload."""

    name: str
    methods: frozenset[str]
    names_upload: bool
    path_param: str = DEFAULT_PATH_PARAM

    @property
    def allow(self) -> str:
        """The ``Allow`` header of this endpoint's 405 answers."""
        return ", ".join(sorted(self.methods))

    def upload_id(self, request: Request, prefix: str) -> str:
        """The upload the request is for: the route's path parameter, else the path below ``prefix``."""
        if not self.names_upload and self.name != "options":
            return ""
        params = request.scope.get("path_params") or {}
        value = params.get(self.path_param)
        if value is not None:
            upload_id = str(value).strip("/")
        elif request.path.startswith(prefix):
            upload_id = request.path[len(prefix) :].strip("/")
        else:
            upload_id = ""
        if self.names_upload and not upload_id:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        return upload_id

    def check_method(self, method: str) -> None:
        """405 (with ``Allow``) for a method this endpoint does not serve."""
        if method not in self.methods:
            raise errors.ERR_METHOD_NOT_ALLOWED(headers={"Allow": self.allow})


class Endpoint:
    """One tus operation as an ASGI application (see :mod:`pytusd.asgi.routing`).

    Use it as a route's endpoint (Starlette ``Route``, FastAPI ``add_route``, any ASGI router), or return
    :meth:`response` from a path operation.
    """

    def __init__(self, app: ASGIApp, operation: Operation) -> None:
        self.app = app
        self.operation = operation

    def __repr__(self) -> str:
        return f"<pytusd Endpoint {self.operation.name} ({self.operation.allow})>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app({**scope, OPERATION_KEY: self.operation}, receive, send)

    def response(self) -> StarletteResponse:
        """A Starlette ``Response`` that serves the request it is sent for with this endpoint.

        For path operations (FastAPI, Starlette request/response functions) that run their own code first
        (authentication dependencies, checks) and then hand the request to pytusd. The request body must not have
        been read. Needs Starlette (FastAPI includes it).
        """
        response: StarletteResponse = _endpoint_response_class()(self)
        return response


@functools.cache
def _endpoint_response_class() -> Any:
    from starlette.responses import Response as StarletteResponse

    class EndpointResponse(StarletteResponse):
        """Sent by running a pytusd endpoint on the request's scope (Starlette then runs background tasks)."""

        def __init__(self, endpoint: Endpoint) -> None:
            super().__init__()
            self.endpoint = endpoint

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.endpoint(scope, receive, send)
            if self.background is not None:
                await self.background()

    return EndpointResponse


class Endpoints:
    """The endpoints of one :class:`pytusd.TusApp` (``app.endpoints``), tusd's ``UnroutedHandler`` methods.

    ``path_param`` is the name of the route parameter that holds the upload ID.
    """

    def __init__(self, app: ASGIApp, path_param: str = DEFAULT_PATH_PARAM) -> None:
        def endpoint(name: str, methods: Iterable[str], names_upload: bool) -> Endpoint:
            return Endpoint(app, Operation(name, frozenset(methods), names_upload, path_param))

        self.create = endpoint("create", ["POST"], False)
        """``POST base_path``: create an upload (with data, when it comes with some)."""
        self.head = endpoint("head", ["HEAD"], True)
        """``HEAD base_path{upload_id}``: the upload's offset, length and metadata."""
        self.patch = endpoint("patch", ["PATCH"], True)
        """``PATCH base_path{upload_id}``: append data."""
        self.get = endpoint("get", ["GET", "HEAD"], True)
        """``GET base_path{upload_id}``: download what is stored (``HEAD`` routed here is served as by ``head``)."""
        self.delete = endpoint("delete", ["DELETE"], True)
        """``DELETE base_path{upload_id}``: terminate the upload."""
        self.options = endpoint("options", ["OPTIONS"], False)
        """``OPTIONS`` of either path: tus discovery (``Tus-Version``, ``Tus-Extension``, ...) and CORS preflight."""

    def __iter__(self) -> Any:
        return iter((self.create, self.head, self.patch, self.get, self.delete, self.options))


class MethodOverrideMiddleware:
    """ASGI middleware: a ``POST`` carrying ``X-HTTP-Method-Override`` is routed as the method it names.

    tusd's ``Middleware`` does the same for clients that cannot send PATCH or DELETE. A mounted TusApp needs no
    middleware (it reads the header itself); wrap your router in this one when you route the endpoints yourself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            for name, value in scope.get("headers", ()):
                if name.lower() == b"x-http-method-override":
                    method = grammar.method_override("POST", value.decode("latin-1"))
                    if method != "POST":
                        scope = {**scope, "method": method}
                    break
        await self.app(scope, receive, send)


__all__ = ["Endpoint", "Endpoints", "MethodOverrideMiddleware", "Operation"]
