"""OpenTelemetry tracing, optional (the ``otel`` extra).

One SERVER span per request, named after its route (``PATCH /files/{id}``), with child spans for the store
operations, the wait for the upload's lock and every hook call. The incoming ``traceparent`` is honoured, and HTTP
hooks receive the context of their span, so a hook receiver's spans join the trace.

Spans are made when opentelemetry-api is installed and a tracer provider is configured: the one given as
``Config.tracer_provider``, or the global one (``opentelemetry.trace.set_tracer_provider``, which
``opentelemetry-instrument`` and ``pytusd --otel-traces`` set). Otherwise every call here is a no-op that
allocates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from .. import extras

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - depends on the installation
    trace = None  # type: ignore[assignment]  # no opentelemetry-api: the module works, without spans

NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()
_UNCONFIGURED: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider) if trace is not None else ()
# The tracer a request resolved when it began (:meth:`Tracing.for_request`): (the Tracing, its tracer or None). Its
# store operations, lock waits and hook calls use that one instead of asking for the global provider each time (an
# unset global provider costs an environment lookup per question).
_request_tracer: contextvars.ContextVar[tuple[Tracing, Any] | None] = contextvars.ContextVar(
    "pytusd_request_tracer", default=None
)


class Tracing:
    """Makes pytusd's spans with ``provider``, or with the global tracer provider when it is None."""

    __slots__ = ("provider", "_tracer", "_tracer_of")

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._tracer: Any = None
        self._tracer_of: Any = None

    def tracer(self) -> Any:
        """The tracer to use now, or None when no spans are to be made: the one the current request resolved
        when it began, else the provider's."""
        if trace is None:
            return None
        current = _request_tracer.get()
        if current is not None and current[0] is self:
            return current[1]
        return self._resolve()

    def _resolve(self) -> Any:
        provider = self.provider if self.provider is not None else trace.get_tracer_provider()
        if isinstance(provider, _UNCONFIGURED):
            return None
        if self._tracer_of is not provider:
            from ..version import __version__

            self._tracer = provider.get_tracer("pytusd", __version__)
            self._tracer_of = provider
        return self._tracer

    @property
    def active(self) -> bool:
        return self.tracer() is not None

    def for_request(self) -> contextvars.Token[tuple[Tracing, Any] | None] | None:
        """Resolve the tracer once for the request beginning in this context (undo with :meth:`request_done`).
        A tracer provider set while the request runs is used from the next request on."""
        if trace is None:
            return None
        return _request_tracer.set((self, self._resolve()))

    @staticmethod
    def request_done(token: contextvars.Token[tuple[Tracing, Any] | None] | None) -> None:
        if token is not None:
            _request_tracer.reset(token)

    async def flush(self, timeout: float = 2.0) -> None:
        """Export the spans still buffered (at shutdown: the process may end by its signal, skipping atexit)."""
        if self.tracer() is None:
            return
        provider = self.provider if self.provider is not None else trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            await asyncio.to_thread(force_flush, int(timeout * 1000))

    def request_span(self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]) -> Any:
        """The span of one request (a context manager yielding the span, or None), continuing the trace of its
        ``traceparent`` header."""
        tracer = self.tracer()
        if tracer is None:
            return NOTHING
        return tracer.start_as_current_span(
            name, context=propagate.extract(headers), kind=SpanKind.SERVER, attributes=dict(attributes)
        )

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False) -> Any:
        """A child span of the current one (a context manager yielding the span, or None)."""
        tracer = self.tracer()
        if tracer is None:
            return NOTHING
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        return tracer.start_as_current_span(name, kind=kind, attributes=dict(attributes or {}))


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span, if one is being recorded (dots in names are written as ``__``)."""
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key.replace("__", "."), value)


def finish_request(span: Any, status: int, attributes: Mapping[str, Any]) -> None:
    """The response's status and what the request turned out to be about, on the request's span."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("http.status_code", status)
    span.set_attribute("http.response.status_code", status)
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (``traceparent``) to outgoing headers."""
    if trace is not None and trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def configure(exporter: str) -> None:
    """``pytusd --otel-traces``: install a global SDK tracer provider exporting to ``console`` or ``otlp``
    (OTLP needs opentelemetry-exporter-otlp; it reads the usual OTEL_EXPORTER_OTLP_* variables)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise ImportError(extras.missing("tracing needs the OpenTelemetry SDK", "otel")) from exc
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            # opentelemetry-exporter-otlp is optional (no extra installs it): not found when mypy runs.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise ImportError("--otel-traces otlp needs pip install opentelemetry-exporter-otlp") from exc
        span_exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"unknown trace exporter {exporter!r} (console or otlp)")
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "pytusd"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
