"""The observability endpoints beside the uploads: ``/health``, ``/ready`` and ``/metrics``.

They are cheap and plain: no CORS, no ``Tus-Resumable``, no hooks, not counted as tus requests. ``/ready`` asks
the store and the locker to answer within :data:`READY_TIMEOUT`, and logs a failing part once while it lasts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from .. import errors
from ..asgitypes import Send
from ..core.config import Config
from ..core.http import Request, Response
from ..lockers import base as lockers
from ..observe import logs
from ..observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..observe.metrics import Metrics
from ..stores import base as stores

log = logging.getLogger("pytusd")

# /ready: how long the store and the locker may take to answer.
READY_TIMEOUT = 5.0


class Health:
    """The endpoints of one app, found by path (relative to the mount point, like ``config.base_path``)."""

    def __init__(self, config: Config, metrics: Metrics, stopping: Callable[[], bool]) -> None:
        self.config = config
        self.metrics = metrics
        self._stopping = stopping  # whether the app is shutting down: /ready then answers 503
        paths = {config.health_path: "health", config.ready_path: "ready"}
        if config.expose_metrics:
            paths[config.metrics_path] = "metrics"
        self._paths = {path: kind for path, kind in paths.items() if path}
        self._not_ready: dict[str, str] = {}  # part -> why, while /ready finds it failing (logged once)

    def endpoint(self, path: str) -> str | None:
        """``"health"``, ``"ready"`` or ``"metrics"`` when the path is one of them."""
        return self._paths.get(path)

    async def serve(self, endpoint: str, request: Request, send: Send, request_id: str) -> None:
        headers = {"Cache-Control": "no-store", "X-Request-ID": request_id, "X-Content-Type-Options": "nosniff"}
        if request.method not in ("GET", "HEAD"):
            headers.update({"Allow": "GET, HEAD", "Content-Type": "text/plain; charset=utf-8"})
            response = Response(405, headers, b"method not allowed\n")
        elif endpoint == "metrics":
            response = Response(200, {**headers, "Content-Type": METRICS_CONTENT_TYPE}, self.metrics.exposition())
        elif endpoint == "health":
            response = _json_response(200, headers, {"status": "ok"})
        else:
            ready, checks = await self.check_ready()
            body = {"status": "ok" if ready else "unavailable", "checks": checks}
            response = _json_response(200 if ready else 503, headers, body)
        if not request.body_consumed:
            response.headers["Connection"] = "close"
        await response.send(send, head_only=request.method == "HEAD")
        log.debug("%s %s -> %d", request.method, request.path, response.status)

    async def check_ready(self) -> tuple[bool, dict[str, str]]:
        """Whether the app can serve uploads: its store and its locker each answered within READY_TIMEOUT.

        Returns ``(ready, {"store": "ok" | "error: <type>", "locker": ...})``; why a part failed is logged. A store
        or locker may offer ``async def ready()`` (raising when it is not); see :func:`pytusd.stores.base.probe` and
        :func:`pytusd.lockers.base.probe`.
        """
        if self._stopping():
            return False, {"server": "shutting down"}
        results = await asyncio.gather(
            self._probe("store", self._store_ready), self._probe("locker", self._locker_ready)
        )
        checks = {"store": results[0], "locker": results[1]}
        return all(result == "ok" for result in results), checks

    async def _probe(self, part: str, check: Callable[[], Awaitable[None]]) -> str:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await check()
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            why = f"did not answer within {READY_TIMEOUT:g} s"
            self._not_ready_now(part, why, f"readiness: the {part} {why}")
            return "error: timeout"
        except Exception as exc:
            self._not_ready_now(part, str(exc), f"readiness: the {part} failed: {errors.one_line(exc)}")
            return f"error: {type(exc).__name__}"
        if self._not_ready.pop(part, None) is not None:
            log.info("readiness: the %s is ready again", part, extra=logs.fields(event="Ready", part=part))
        return "ok"

    def _not_ready_now(self, part: str, why: str, message: str) -> None:
        """Log a part's failure once (WARNING) while it lasts; the same failure again at the next poll is DEBUG."""
        level = logging.DEBUG if self._not_ready.get(part) == why else logging.WARNING
        self._not_ready[part] = why
        log.log(level, "%s", message, extra=logs.fields(event="NotReady", part=part))

    async def _store_ready(self) -> None:
        await stores.probe(self.config.store)

    async def _locker_ready(self) -> None:
        await lockers.probe(self.config.locker)


def _json_response(status: int, headers: dict[str, str], body: object) -> Response:
    return Response(status, {**headers, "Content-Type": "application/json"}, json.dumps(body).encode() + b"\n")
