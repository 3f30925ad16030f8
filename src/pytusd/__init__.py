"""pytusd: a tus resumable-upload server for Python.

Serve it with the ``pytusd`` command, or mount :class:`TusApp` in any ASGI application::

    from pytusd import Config, FileStore, TusApp
    app = TusApp(Config(store=FileStore("./data"), base_path="/files/"))
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from .app import TusApp
from .config import Config, CorsConfig
from .errors import TusError
from .lockers import FileLocker, Locker, MemoryLocker
from .stores import DataStore, FileStore, S3Store, Upload
from .types import UploadInfo

if TYPE_CHECKING:
    from .lockers.redis import RedisLocker as RedisLocker


def __getattr__(name: str) -> Any:
    # RedisLocker needs the optional redis package: imported on first use (pip install 'pytusd[redis]').
    if name == "RedisLocker":
        from .lockers.redis import RedisLocker

        return RedisLocker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Config",
    "CorsConfig",
    "DataStore",
    "FileLocker",
    "FileStore",
    "Locker",
    "MemoryLocker",
    "S3Store",
    "TusApp",
    "TusError",
    "Upload",
    "UploadInfo",
    "__version__",
]
