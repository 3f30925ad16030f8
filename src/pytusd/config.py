"""Configuration: one object that the command line and library users build alike."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from . import protocol
from .hooks import HOOK_TYPES, Hooks, PythonHookBackend
from .lockers import Locker, MemoryLocker
from .rules import UploadRules
from .stores import DataStore


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
        return protocol.merge_header_lists(protocol.CORS_ALLOW_METHODS, self.allow_methods)

    @property
    def headers_header(self) -> str:
        return protocol.merge_header_lists(protocol.CORS_ALLOW_HEADERS, self.allow_headers)

    @property
    def expose_header(self) -> str:
        return protocol.merge_header_lists(protocol.CORS_EXPOSE_HEADERS, self.expose_headers)


@dataclasses.dataclass
class Config:
    """Everything :class:`pytusd.TusApp` needs.

    ``base_path`` is where uploads live under the app's mount point (``/files/``); it may also be an absolute URL
    (``https://cdn.example/files/``), which is then used as is for upload URLs. ``max_size`` 0 means no limit.
    Timeouts are seconds. ``expiration`` > 0 removes unfinished uploads that long after their last change (checked
    on access, and by a cleaner every ``expiration_cleanup_interval`` seconds). ``request_trailers`` says that the
    ASGI server passes request trailers on (pytusd's own server does), which enables checksum-trailer.
    """

    store: DataStore
    locker: Locker = dataclasses.field(default_factory=MemoryLocker)
    base_path: str = "/files/"
    max_size: int = 0
    behind_proxy: bool = False
    disable_download: bool = False
    disable_termination: bool = False
    disable_concatenation: bool = False
    disable_concatenation_unfinished: bool = False
    cors: CorsConfig = dataclasses.field(default_factory=CorsConfig)
    network_timeout: float = 60.0
    acquire_lock_timeout: float = 20.0
    show_greeting: bool = False
    upload_page: bool = False  # GET / serves a browser upload page (pytusd.page); the CLI turns it on
    expiration: float = 0.0
    request_trailers: bool = False
    enable_experimental_protocol: bool = False
    hooks: Hooks | Callable[[str, dict[str, Any]], Any] | None = None
    rules: UploadRules | None = None
    expiration_cleanup_interval: float = 60.0
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
        if self.network_timeout <= 0 or self.acquire_lock_timeout <= 0:
            raise ValueError("timeouts must be positive")
        re.compile(self.cors.allow_origin)
        if self.hooks is not None and not isinstance(self.hooks, Hooks):
            # A plain (async) callable: it sees every event but pre-access, which stays opt-in.
            events = [e for e in HOOK_TYPES if e != "pre-access"]
            self.hooks = Hooks(PythonHookBackend(self.hooks), events)

    @property
    def route_prefix(self) -> str:
        """The path part of ``base_path`` (which may be an absolute URL) that requests are routed under."""
        if "://" in self.base_path:
            rest = self.base_path.split("://", 1)[1]
            slash = rest.find("/")
            return rest[slash:] if slash >= 0 else "/"
        return self.base_path
