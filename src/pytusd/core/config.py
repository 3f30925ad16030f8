"""Configuration: one object that the command line and library users build alike."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from ..hooks import HOOK_TYPES, Hooks, PythonHookBackend
from ..lockers import Locker, MemoryLocker
from ..stores import DataStore, capabilities
from . import digests, grammar
from .events import PreCreateCallback, PreFinishCallback
from .rules import UploadProfiles, UploadRules


@dataclasses.dataclass(frozen=True)
class CorsConfig:
    """Cross-origin rules, as tusd's CorsConfig.

    ``allow_origin`` is a regular expression searched (unanchored, like tusd) in the request's ``Origin``; a
    request whose origin does not match gets 403 ERR_ORIGIN_NOT_ALLOWED. The header lists given here are added to
    the ones the protocol needs, never replace them.
    """

    disable: bool = False
    allow_origin: str = ".*"
    allow_credentials: bool = False
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = "86400"

    @property
    def origin_pattern(self) -> re.Pattern[str]:
        return re.compile(self.allow_origin)

    @property
    def methods_header(self) -> str:
        return grammar.merge_header_lists(grammar.CORS_ALLOW_METHODS, self.allow_methods)

    @property
    def headers_header(self) -> str:
        return grammar.merge_header_lists(grammar.CORS_ALLOW_HEADERS, self.allow_headers)

    @property
    def expose_header(self) -> str:
        return grammar.merge_header_lists(grammar.CORS_EXPOSE_HEADERS, self.expose_headers)


@dataclasses.dataclass
class Config:
    """Everything :class:`pytusd.TusApp` needs: one typed object, which the ``pytusd`` command builds too
    (tusd's ``handler.Config``).

    >>> Config(store=FileStore("./data"), locker=FileLocker("./data"), max_size=1 << 30)

    Storage and locking (any store works with any locker):

    - ``store``: where bytes live, a :class:`~pytusd.DataStore` (``FileStore``, ``S3Store``, ``AzureStore``,
      ``GCSStore`` or your own). Capabilities the store lacks (termination, concatenation, creation-defer-length,
      checksum, expiration) are not advertised in ``Tus-Extension`` and their requests are refused.
    - ``locker``: per-upload locks, a :class:`~pytusd.Locker`: ``MemoryLocker()`` (default; one process),
      ``FileLocker(dir)`` (processes on one host), ``RedisLocker(url)`` (any number of hosts).
    - Durability is the store's: ``FileStore(path, fsync=True)`` (the command's ``--fsync``) flushes the data and
      the ``.info`` to the device before a PATCH or POST is answered, so an acknowledged offset survives a power
      loss.

    Routes and limits:

    - ``base_path``: where uploads live under the app's mount point (``/files/``); it may also be an absolute URL
      (``https://cdn.example/files/``), which is then used as is for upload URLs. When you route the endpoints
      yourself (:class:`~pytusd.Endpoints`), it is the path of your creation route.
    - ``max_size``: the largest upload in bytes (``Tus-Max-Size``); 0 means no limit.
    - ``max_metadata_size``, ``max_metadata_pairs``: limits of ``Upload-Metadata`` (0: none).
    - ``max_concat_partials``: how many partial uploads a final may name (0: no limit).
    - ``rules``: :class:`~pytusd.core.rules.UploadRules` checked at creation (size, metadata, file types), or
      :class:`~pytusd.core.rules.UploadProfiles`, named rule sets of which each upload gets one.

    Protocol switches:

    - ``disable_download``: refuse ``GET`` of uploads. ``disable_termination``: refuse ``DELETE`` (termination
      is not advertised). ``disable_concatenation``: refuse ``Upload-Concat``. ``disable_concatenation_unfinished``:
      finals only of finished partials.
    - ``enable_experimental_protocol``: also accept the IETF resumable-upload draft (interop versions 3 to 8).
    - ``request_trailers``: not needed any more, kept so that code setting it still works: a server that passes
      request trailers on says so in each request's scope (pytusd's own server does), which enables
      checksum-trailer for that request. True advertises checksum-trailer under any server.
    - ``expiration``: > 0 removes unfinished uploads that many seconds after their last change (checked on access,
      and by a cleaner every ``expiration_cleanup_interval`` seconds); needs a store that can expire uploads.

    HTTP:

    - ``cors``: a :class:`CorsConfig` (allowed origins, credentials, extra headers; ``disable`` when a proxy does
      CORS).
    - ``behind_proxy``: trust ``X-Forwarded-Host``, ``X-Forwarded-Proto`` and ``Forwarded`` for upload URLs (and
      ``X-Forwarded-For`` for per-client limits).
    - ``network_timeout``: seconds a request body may stay silent. ``acquire_lock_timeout``: seconds to wait for an
      upload's lock (then 500 ``ERR_LOCK_TIMEOUT``). ``request_completion_timeout``: seconds the store may still
      take to store what a request received once it ended early (client gone, shutdown, lock handover). ``min_body_rate``, ``max_concurrent_uploads``,
      ``max_uploads_per_client``, ``retry_after``: protection from slow or greedy clients (see the comments next
      to them).
    - ``show_greeting``: ``GET /`` answers a greeting text. ``upload_page``: ``GET /`` serves a browser upload page.

    Extending:

    - ``hooks``: tusd's hooks: a :class:`~pytusd.Hooks` (file, HTTP, gRPC, Python backends), or a plain (async)
      callable ``fn(hook_type, request_json)`` which then receives every event but pre-access.
    - ``pre_create``: an async callable run before an upload is created (tusd's ``PreUploadCreateCallback``), after
      the pre-create hook; it can reject the upload or change its ID, metadata and storage
      (:data:`pytusd.core.events.PreCreateCallback`).
    - ``pre_finish``: an async callable run when an upload completed, before the response (tusd's
      ``PreFinishResponseCallback``), after the pre-finish hook; it can change the response
      (:data:`pytusd.core.events.PreFinishCallback`).
    - Event streams need no configuration: subscribe to ``app.events`` (:class:`~pytusd.Events`).

    Observability (paths relative to the mount point; ``""`` turns one off):

    - ``expose_metrics``, ``metrics_path``: Prometheus metrics (``app.metrics``, readable in-process with
      ``app.metrics.snapshot()``).
    - ``health_path``, ``ready_path``: liveness and readiness endpoints.
    - ``tracer_provider``: an OpenTelemetry ``TracerProvider`` (None: the global one, if configured).

    Fields not listed here are documented by the comments next to them in the source.
    """

    store: DataStore
    locker: Locker = dataclasses.field(default_factory=MemoryLocker)
    base_path: str = "/files/"
    max_size: int = 0
    # Upload-Metadata limits (0: none): larger headers get 431 ERR_METADATA_TOO_LARGE. tusd has none of its own, only
    # Go's 1 MiB limit on all header fields; these keep every .info and hook payload small.
    max_metadata_size: int = 64 * 1024
    max_metadata_pairs: int = 256
    # Partial uploads one final may name (0: no limit). tusd has none; each costs a lookup (and a pre-access hook
    # call) when the final is created and when it is completed, so one POST cannot ask for unbounded work.
    max_concat_partials: int = 128
    behind_proxy: bool = False
    disable_download: bool = False
    disable_termination: bool = False
    disable_concatenation: bool = False
    disable_concatenation_unfinished: bool = False
    cors: CorsConfig = dataclasses.field(default_factory=CorsConfig)
    network_timeout: float = 60.0
    acquire_lock_timeout: float = 20.0
    # tusd's GracefulRequestCompletionTimeout: once a request ended early (the client went away, the server shuts
    # down, another request wants the upload's lock, a hook stopped it), the store may go on storing what arrived
    # for this many seconds; then that work is cancelled and the request answers with why it ended.
    request_completion_timeout: float = 10.0
    # Hostile clients (README "Reliability"). min_body_rate: a body arriving slower than this many bytes/s, on
    # average over each network_timeout of waiting for it, ends with ERR_READ_TIMEOUT (0: only silence counts, as
    # in tusd). max_concurrent_uploads / max_uploads_per_client: at most that many PATCH (or POST with a body)
    # requests writing at once, in all / per client IP (the last X-Forwarded-For or Forwarded "for" entry with
    # behind_proxy); more are answered 503 ERR_TOO_MANY_UPLOADS / 429 ERR_TOO_MANY_CLIENT_UPLOADS with
    # Retry-After, their bodies unread. 0: no limit. Counted per process (per worker under --workers).
    min_body_rate: float = 10.0
    max_concurrent_uploads: int = 0
    max_uploads_per_client: int = 0
    retry_after: int = 1
    show_greeting: bool = False
    upload_page: bool = False  # GET / serves a browser upload page (pytusd.asgi.page); the CLI turns it on
    expiration: float = 0.0
    request_trailers: bool = False
    enable_experimental_protocol: bool = False
    hooks: Hooks | Callable[[str, dict[str, Any]], Any] | None = None
    # Library callbacks (pytusd.core.events): async callables run after the pre-create / pre-finish hooks.
    pre_create: PreCreateCallback | None = None
    pre_finish: PreFinishCallback | None = None
    rules: UploadRules | UploadProfiles | None = None
    expiration_cleanup_interval: float = 60.0
    # Whole-upload digests (pytusd.core.digests): "sha256", "sha512" or both ("sha256,sha512" or a tuple); each
    # upload's digest of its full content, computed as its bytes arrive, stored in Storage["Repr-Digest"] and sent
    # as Repr-Digest on HEAD and GET. Needs a store that can annotate its uploads (every built-in one can).
    digest: str | tuple[str, ...] = ()
    # Observability (README "Operating pytusd"): paths are relative to where the app is mounted; "" turns one off.
    expose_metrics: bool = True
    metrics_path: str = "/metrics"
    health_path: str = "/health"
    ready_path: str = "/ready"
    tracer_provider: Any = None  # an OpenTelemetry TracerProvider; None: the global one, if configured

    def __post_init__(self) -> None:
        for name in ("metrics_path", "health_path", "ready_path"):
            path = getattr(self, name)
            if path and not path.startswith("/"):
                setattr(self, name, "/" + path)
        base = self.base_path or "/"
        if "://" not in base and not base.startswith("/"):
            base = "/" + base
        if not base.endswith("/"):
            base += "/"
        self.base_path = base
        if self.max_size < 0:
            raise ValueError("max_size must be >= 0")
        if self.max_metadata_size < 0 or self.max_metadata_pairs < 0 or self.max_concat_partials < 0:
            raise ValueError("max_metadata_size, max_metadata_pairs and max_concat_partials must be >= 0")
        if self.network_timeout <= 0 or self.acquire_lock_timeout <= 0 or self.request_completion_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.min_body_rate < 0 or self.max_concurrent_uploads < 0 or self.max_uploads_per_client < 0:
            raise ValueError("min_body_rate, max_concurrent_uploads and max_uploads_per_client must be >= 0")
        re.compile(self.cors.allow_origin)
        self.digest = digests.parse_algorithms(self.digest)
        if self.digest and not capabilities(self.store).annotate:
            raise ValueError(f"digest needs a store whose uploads can be annotated; {self.store!r} declares none")
        if self.hooks is not None and not isinstance(self.hooks, Hooks):
            # A plain (async) callable: it sees every event but pre-access, which stays opt-in.
            events = [e for e in HOOK_TYPES if e != "pre-access"]
            self.hooks = Hooks(PythonHookBackend(self.hooks), events)
        if isinstance(self.rules, UploadProfiles) and isinstance(self.hooks, Hooks):
            # A profile names the hooks of its uploads: for every path that runs hooks (the app, admin commands).
            self.hooks.allows = self.rules.allows_hook

    @property
    def route_prefix(self) -> str:
        """The path part of ``base_path`` (which may be an absolute URL) that requests are routed under."""
        if "://" in self.base_path:
            rest = self.base_path.split("://", 1)[1]
            slash = rest.find("/")
            return rest[slash:] if slash >= 0 else "/"
        return self.base_path
