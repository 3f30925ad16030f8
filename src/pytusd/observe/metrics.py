"""Prometheus metrics: tusd's names (so tusd dashboards and alerts work unchanged) plus pytusd's own.

Every :class:`pytusd.TusApp` has one :class:`Metrics` (``app.metrics``) with its own ``registry``; the app serves
it at ``config.metrics_path``. tusd's metrics keep tusd's names, types and labels:

=================================  =======  ==============  ==========================================
``tusd_requests_total``            counter  method          requests per method (uploads' routes only)
``tusd_errors_total``              counter  status, code    error responses per status and tus code
``tusd_bytes_received``            counter                  upload bytes stored
``tusd_uploads_created``           counter                  uploads created
``tusd_uploads_finished``          counter                  uploads whose last byte was stored
``tusd_uploads_terminated``        counter                  uploads deleted (DELETE, or stopped by a hook)
``tusd_connections_open``          gauge                    open connections (see below)
``tusd_hook_invocations_total``    counter  hooktype        hook calls (one per backend bound to the event)
``tusd_hook_errors_total``         counter  hooktype        failed hook calls
=================================  =======  ==============  ==========================================

and pytusd adds ``pytusd_upload_duration_seconds`` and ``pytusd_upload_size_bytes`` (histograms, at finish),
``pytusd_active_uploads`` (gauge: request bodies being written), ``pytusd_lock_wait_seconds`` (histogram),
``pytusd_store_operation_seconds{operation}`` (histogram), ``pytusd_expired_uploads_removed_total`` (counter) and,
with ``--hooks-durable``, ``pytusd_hook_outbox_pending`` and ``pytusd_hook_outbox_oldest_seconds`` (gauges),
``pytusd_hook_delivery_attempts_total{hooktype,result}`` and ``pytusd_hook_dead_letters_total{hooktype}``.

``tusd_connections_open`` counts open HTTP connections when pytusd's own server runs the app (``pytusd``); an
app served by another ASGI server counts the requests in progress instead.

Several processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before the process starts), prometheus_client's
multiprocess mode is used: every process writes its numbers to files in that directory and each ``/metrics``
answers with the sum over all of them. Gauges count live processes only (``livesum``); a process that ends
removes its gauge files (:meth:`Metrics.process_exited`). Empty the directory before starting the processes. In
that mode all apps of a process share one set of numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import Metric

from ..hooktypes import HOOK_TYPES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# tusd exposes these counters without the _total suffix (Go client, const metrics); prometheus_client would add it.
PLAIN_COUNTERS = ("tusd_bytes_received", "tusd_uploads_created", "tusd_uploads_finished", "tusd_uploads_terminated")
METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS")  # tusd's, each pre-set to 0
STORE_OPERATIONS = ("create", "get", "write", "finish", "terminate", "concat")

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 86400)
SIZE_BUCKETS = tuple(float(10**n) for n in range(3, 12))  # 1 KB .. 100 GB
LOCK_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# Creation times kept for pytusd_upload_duration_seconds: uploads created by this process, unfinished, at most.
_MAX_TRACKED = 65536
_MAX_CHILDREN = 4096  # labelled children remembered by Metrics._child


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, if this process uses it."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class _Instruments:
    """The prometheus_client objects, not registered anywhere: :class:`_Exposed` reads them."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=None)

        def histogram(name: str, doc: str, buckets: Iterable[float], labels: Iterable[str] = ()) -> Histogram:
            return Histogram(name, doc, list(labels), registry=None, buckets=tuple(buckets))

        self.requests = counter(
            "tusd_requests_total", "Total number of requests served by tusd per method.", ["method"]
        )
        self.errors = counter("tusd_errors_total", "Total number of errors per status.", ["status", "code"])
        self.bytes_received = counter("tusd_bytes_received", "Number of bytes received for uploads.")
        self.uploads_created = counter("tusd_uploads_created", "Number of created uploads.")
        self.uploads_finished = counter("tusd_uploads_finished", "Number of finished uploads.")
        self.uploads_terminated = counter("tusd_uploads_terminated", "Number of terminated uploads.")
        self.connections_open = Gauge(
            "tusd_connections_open", "Current number of open connections.", registry=None, multiprocess_mode="livesum"
        )
        self.hook_invocations = counter(
            "tusd_hook_invocations_total", "Total number of invocations per hook type.", ["hooktype"]
        )
        self.hook_errors = counter(
            "tusd_hook_errors_total", "Total number of execution errors per hook type.", ["hooktype"]
        )
        self.upload_duration = histogram(
            "pytusd_upload_duration_seconds",
            "Time from creation to the last byte of uploads created and finished by this server process.",
            DURATION_BUCKETS,
        )
        self.upload_size = histogram("pytusd_upload_size_bytes", "Size of finished uploads.", SIZE_BUCKETS)
        self.active_uploads = Gauge(
            "pytusd_active_uploads",
            "Requests writing upload data right now (PATCH, creation-with-upload).",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.lock_wait = histogram("pytusd_lock_wait_seconds", "Time spent waiting for an upload's lock.", LOCK_BUCKETS)
        self.store_operation = histogram(
            "pytusd_store_operation_seconds",
            "Duration of store operations (write includes receiving the request body).",
            STORE_BUCKETS,
            ["operation"],
        )
        self.expired_removed = counter(
            "pytusd_expired_uploads_removed_total",
            "Expired unfinished uploads removed (by the background cleaner, or when a request found them expired).",
        )
        # --hooks-durable: the outbox, as every process sees it (the same shared outbox: the largest, not the sum).
        self.outbox_pending = Gauge(
            "pytusd_hook_outbox_pending", "Durable hook events waiting for delivery (counted up to the outbox's batch).",

            registry=None, multiprocess_mode="livemax",
        )
        self.outbox_oldest = Gauge(
            "pytusd_hook_outbox_oldest_seconds", "Age of the oldest durable hook event waiting for delivery.",
            registry=None, multiprocess_mode="livemax",
        )
        self.hook_deliveries = counter(
            "pytusd_hook_delivery_attempts_total", "Delivery attempts of durable hook events per hook type and result.",
            ["hooktype", "result"],
        )
        self.hook_dead_letters = counter(
            "pytusd_hook_dead_letters_total", "Durable hook events given up (dead letters) per hook type.", ["hooktype"]
        )
        # Label values known in advance appear at 0, as in tusd.
        for method in METHODS:
            self.requests.labels(method)
        for hook_type in HOOK_TYPES:
            self.hook_invocations.labels(hook_type)
            self.hook_errors.labels(hook_type)
        for operation in STORE_OPERATIONS:
            self.store_operation.labels(operation)

    def all(self) -> list[Any]:
        return list(vars(self).values())


_shared: _Instruments | None = None


def _process_instruments() -> _Instruments:
    """One set per process in multiprocess mode: two objects writing the same key of a process's file would
    overwrite each other's numbers."""
    global _shared
    if _shared is None:
        _shared = _Instruments()
    return _shared


def _tusd_shape(family: Metric) -> Metric:
    """The family as tusd exposes it: no ``_created`` samples, and tusd's plain counters under their own name."""
    if family.name in PLAIN_COUNTERS and family.type == "counter":
        plain = Metric(family.name, family.documentation, "unknown")  # typed "counter" again by exposition()
        for sample in family.samples:
            if sample.name == family.name + "_total":
                plain.add_sample(family.name, sample.labels, sample.value)
        return plain
    created = family.name + "_created"
    family.samples = [s for s in family.samples if s.name != created]
    return family


class _Exposed:
    """The collector registered in a :class:`Metrics` registry."""

    def __init__(self, instruments: _Instruments, directory: str | None) -> None:
        self._instruments = instruments
        self._directory = directory

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self._directory is not None:
            # prometheus_client's multiprocess module has no annotations.
            collector = _multiprocess.MultiProcessCollector(None, self._directory)  # type: ignore[no-untyped-call]
            families: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
        else:
            families = (family for instrument in self._instruments.all() for family in instrument.collect())
        for family in families:
            yield _tusd_shape(family)


class _Timed:
    """Observes the seconds its ``with`` block took (a class: cheaper per request than a generator's manager)."""

    __slots__ = ("_histogram", "_started")

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(time.perf_counter() - self._started)


@dataclasses.dataclass(frozen=True)
class MetricsSnapshot:
    """The numbers of an app at one moment, read from its registry: what its Prometheus endpoint shows (tusd's
    ``Metrics``: RequestsTotal, ErrorsTotal, BytesReceived, UploadsCreated, UploadsFinished, UploadsTerminated).

    In multiprocess mode they are the sums over all processes, as the endpoint's are.
    """

    requests: Mapping[str, int]
    """Requests per method (``GET``, ``HEAD``, ``POST``, ``PATCH``, ``DELETE``, ``OPTIONS``):
    ``tusd_requests_total``."""
    errors: Mapping[tuple[int, str], int]
    """Error responses per ``(status, tus error code)``: ``tusd_errors_total``."""
    bytes_received: int
    """Upload bytes stored: ``tusd_bytes_received``."""
    uploads_created: int
    """``tusd_uploads_created``."""
    uploads_finished: int
    """``tusd_uploads_finished``."""
    uploads_terminated: int
    """``tusd_uploads_terminated`` (DELETE, or stopped by a hook)."""
    connections_open: int
    """``tusd_connections_open`` (see the module's notes)."""
    active_uploads: int
    """Requests writing upload data right now: ``pytusd_active_uploads``."""
    expired_uploads_removed: int
    """``pytusd_expired_uploads_removed_total``."""
    hook_invocations: Mapping[str, int]
    """Hook calls per hook type: ``tusd_hook_invocations_total``."""
    hook_errors: Mapping[str, int]
    """Failed hook calls per hook type: ``tusd_hook_errors_total``."""

    @property
    def requests_total(self) -> int:
        """All requests, whatever their method."""
        return sum(self.requests.values())

    @property
    def errors_by_code(self) -> dict[str, int]:
        """Error responses per tus error code (``ERR_UPLOAD_NOT_FOUND``: 3, ...)."""
        counts: dict[str, int] = {}
        for (_, code), count in self.errors.items():
            counts[code] = counts.get(code, 0) + count
        return counts

    @property
    def errors_by_status(self) -> dict[int, int]:
        """Error responses per HTTP status."""
        counts: dict[int, int] = {}
        for (status, _), count in self.errors.items():
            counts[status] = counts.get(status, 0) + count
        return counts

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())


class Metrics:
    """The numbers of one :class:`pytusd.TusApp`.

    ``registry`` is a ``prometheus_client.CollectorRegistry`` holding them (and nothing else); register more
    collectors in it to serve them at the same path. Read them in-process with :meth:`snapshot` (a typed
    :class:`MetricsSnapshot`, tusd's ``Metrics``) or :meth:`value`; :meth:`exposition` renders the registry in
    Prometheus' text format. The recording methods are what the app calls.
    """

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None:
            os.makedirs(self.multiprocess_dir, exist_ok=True)
            self._i = _process_instruments()
        else:
            self._i = _Instruments()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exposed(self._i, self.multiprocess_dir))
        self._started: OrderedDict[str, float] = OrderedDict()
        # Labelled children by (instrument, label values): prometheus_client checks and looks up the labels on every
        # labels() call; a request costs a few of them, so each child is looked up once (bounded: error codes from
        # hooks are open-ended, and past the bound labels() answers as before).
        self._children: dict[tuple[Any, ...], Any] = {}

    def __repr__(self) -> str:
        mode = f"multiprocess {self.multiprocess_dir!r}" if self.multiprocess_dir else "this process"
        return f"<pytusd Metrics ({mode})>"

    # -- reading ----------------------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (0.0.4), byte for byte the shape tusd's endpoint has."""
        text = generate_latest(self.registry)
        for name in PLAIN_COUNTERS:
            text = text.replace(f"# TYPE {name} untyped\n".encode(), f"# TYPE {name} counter\n".encode(), 1)
        return text

    def snapshot(self) -> MetricsSnapshot:
        """The current numbers as a :class:`MetricsSnapshot`, read from the registry in one pass, so they are
        exactly what ``config.metrics_path`` serves.

        >>> app.metrics.snapshot().uploads_finished
        """
        requests: dict[str, int] = dict.fromkeys(METHODS, 0)
        errors: dict[tuple[int, str], int] = {}
        hooks: dict[str, dict[str, int]] = {"tusd_hook_invocations_total": {}, "tusd_hook_errors_total": {}}
        plain = {
            "tusd_bytes_received": 0.0,
            "tusd_uploads_created": 0.0,
            "tusd_uploads_finished": 0.0,
            "tusd_uploads_terminated": 0.0,
            "tusd_connections_open": 0.0,
            "pytusd_active_uploads": 0.0,
            "pytusd_expired_uploads_removed_total": 0.0,
        }
        for family in self.registry.collect():
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "tusd_requests_total":
                    method = labels.get("method", "")
                    requests[method] = requests.get(method, 0) + int(value)
                elif name == "tusd_errors_total":
                    key = (int(labels.get("status", "0") or 0), labels.get("code", ""))
                    errors[key] = errors.get(key, 0) + int(value)
                elif name in hooks:
                    per_type = hooks[name]
                    hook_type = labels.get("hooktype", "")
                    per_type[hook_type] = per_type.get(hook_type, 0) + int(value)
                elif name in plain:
                    plain[name] += value
        return MetricsSnapshot(
            requests=requests,
            errors=errors,
            bytes_received=int(plain["tusd_bytes_received"]),
            uploads_created=int(plain["tusd_uploads_created"]),
            uploads_finished=int(plain["tusd_uploads_finished"]),
            uploads_terminated=int(plain["tusd_uploads_terminated"]),
            connections_open=int(plain["tusd_connections_open"]),
            active_uploads=int(plain["pytusd_active_uploads"]),
            expired_uploads_removed=int(plain["pytusd_expired_uploads_removed_total"]),
            hook_invocations=hooks["tusd_hook_invocations_total"],
            hook_errors=hooks["tusd_hook_errors_total"],
        )

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it has none yet), e.g. ``value("tusd_errors_total", code=...)``.

        Labels not given are summed over."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    # -- recording --------------------------------------------------------------------------------------------------

    def _child(self, instrument: Any, *labels: str) -> Any:
        key = (instrument, *labels)
        child = self._children.get(key)
        if child is None:
            child = instrument.labels(*labels)
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = child
        return child

    def request(self, method: str) -> None:
        if method in METHODS:
            self._child(self._i.requests, method).inc()

    def error(self, status: int, code: str) -> None:
        self._child(self._i.errors, str(status), code).inc()

    def bytes_received(self, count: int) -> None:
        if count > 0:
            self._i.bytes_received.inc(count)

    def upload_created(self, upload_id: str) -> None:
        self._i.uploads_created.inc()
        started = self._started
        started[upload_id] = time.time()
        while len(started) > _MAX_TRACKED:
            started.popitem(last=False)

    def upload_finished(self, upload_id: str, size: int) -> None:
        self._i.uploads_finished.inc()
        self._i.upload_size.observe(size)
        started = self._started.pop(upload_id, None)
        if started is not None:
            self._i.upload_duration.observe(max(0.0, time.time() - started))

    def upload_terminated(self, upload_id: str) -> None:
        self._i.uploads_terminated.inc()
        self._started.pop(upload_id, None)

    def hook_invoked(self, hook_type: str) -> None:
        self._child(self._i.hook_invocations, hook_type).inc()

    def hook_failed(self, hook_type: str) -> None:
        self._child(self._i.hook_errors, hook_type).inc()

    def hook_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Invocations and failures per hook type, as counted by this process."""
        def read(counter: Counter) -> dict[str, int]:
            counts = dict.fromkeys(HOOK_TYPES, 0)
            for family in counter.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        counts[sample.labels["hooktype"]] = int(sample.value)
            return counts

        return read(self._i.hook_invocations), read(self._i.hook_errors)

    def hook_outbox(self, pending: int, oldest: float) -> None:
        self._i.outbox_pending.set(pending)
        self._i.outbox_oldest.set(oldest)

    def hook_delivery(self, hook_type: str, ok: bool) -> None:
        self._i.hook_deliveries.labels(hook_type, "ok" if ok else "failed").inc()

    def hook_dead_letter(self, hook_type: str) -> None:
        self._i.hook_dead_letters.labels(hook_type).inc()

    def connection_opened(self) -> None:
        self._i.connections_open.inc()

    def connection_closed(self) -> None:
        self._i.connections_open.dec()

    def expired_removed(self, count: int) -> None:
        if count > 0:
            self._i.expired_removed.inc(count)

    @contextlib.contextmanager
    def active_upload(self) -> Iterator[None]:
        gauge = self._i.active_uploads
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def lock_wait(self) -> _Timed:
        """Time the wait for an upload's lock (a context manager)."""
        return _Timed(self._i.lock_wait)

    def store_operation(self, operation: str) -> _Timed:
        """Time one store operation (a context manager)."""
        return _Timed(self._child(self._i.store_operation, operation))

    def process_exited(self) -> None:
        """Multiprocess mode: drop this process's live gauges (connections, active uploads) from the sums."""
        if self.multiprocess_dir is not None:
            # prometheus_client's multiprocess module has no annotations.
            _multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
