"""pytusd: a tus resumable-upload server for Python.

Serve it with the ``pytusd`` command, or mount :class:`TusApp` in any ASGI application::

    from pytusd import Config, FileStore, TusApp
    app = TusApp(Config(store=FileStore("./data"), base_path="/files/"))

As a library (the counterpart of tusd's ``handler`` package):

* :class:`Config`: everything in one typed object; any store (:class:`DataStore`) with any locker
  (:class:`Locker`); a store advertises only the extensions it implements.
* ``app.events`` (:class:`Events`): async streams of created, progress, completed and terminated uploads.
* ``Config(pre_create=..., pre_finish=...)``: async callbacks that can reject or change uploads
  (:mod:`pytusd.core.events`), answering with a :class:`HookResponse` or raising :class:`TusError`.
* ``app.endpoints`` (:class:`Endpoints`): the operations one by one for your own router, with
  :class:`MethodOverrideMiddleware` (:mod:`pytusd.asgi.routing`).
* ``app.metrics.snapshot()`` (:class:`MetricsSnapshot`): the Prometheus numbers, in-process.

``S3Store``, ``AzureStore``, ``GCSStore`` and ``RedisLocker`` need optional packages (the extras
``s3``, ``azure``, ``gcs``, ``redis``: :func:`pytusd.extras.install_hint` says how to install them); the last three are
imported on first use.
"""

from .version import __version__

from typing import TYPE_CHECKING, Any

from .asgi.app import TusApp
from .asgi.routing import Endpoint, Endpoints, MethodOverrideMiddleware
from .core.config import Config, CorsConfig
from .core.events import (
    EventKind,
    Events,
    HTTPRequestInfo,
    PreCreateCallback,
    PreFinishCallback,
    Subscription,
    UploadEvent,
)
from .core.rules import UploadProfiles, UploadRules
from .errors import TusError
from .hooks import HookResponse, Hooks
from .info import UploadInfo
from .lockers import FileLocker, Lock, Locker, MemoryLocker
from .observe.metrics import Metrics, MetricsSnapshot
from .stores import (
    Capabilities,
    Concatenatable,
    DataStore,
    FileStore,
    LengthDeferrable,
    S3Store,
    Terminatable,
    Upload,
    Verifiable,
)

if TYPE_CHECKING:
    from .lockers.redis import RedisLocker as RedisLocker
    from .stores.azure import AzureStore as AzureStore
    from .stores.gcs import GCSStore as GCSStore

# Classes whose modules need optional packages (extras): imported on first use.
_LAZY = {
    "RedisLocker": ("pytusd.lockers.redis", "RedisLocker"),
    "AzureStore": ("pytusd.stores.azure", "AzureStore"),
    "GCSStore": ("pytusd.stores.gcs", "GCSStore"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The lazily imported classes are not in __all__: ``from pytusd import *`` must not need optional packages.
__all__ = [
    "Capabilities",
    "Concatenatable",
    "Config",
    "CorsConfig",
    "DataStore",
    "Endpoint",
    "Endpoints",
    "EventKind",
    "Events",
    "FileLocker",
    "FileStore",
    "HTTPRequestInfo",
    "HookResponse",
    "Hooks",
    "LengthDeferrable",
    "Lock",
    "Locker",
    "MemoryLocker",
    "MethodOverrideMiddleware",
    "Metrics",
    "MetricsSnapshot",
    "PreCreateCallback",
    "PreFinishCallback",
    "S3Store",
    "Subscription",
    "Terminatable",
    "TusApp",
    "TusError",
    "Upload",
    "UploadEvent",
    "UploadInfo",
    "UploadProfiles",
    "UploadRules",
    "Verifiable",
    "__version__",
]
