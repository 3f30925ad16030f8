"""pytusd: a tus resumable-upload server for Python.

Serve it with the ``pytusd`` command, or mount :class:`TusApp` in any ASGI application::

    from pytusd import Config, FileStore, TusApp
    app = TusApp(Config(store=FileStore("./data"), base_path="/files/"))
"""

__version__ = "0.1.0"

from .app import TusApp
from .config import Config, CorsConfig
from .errors import TusError
from .lockers import FileLocker, Locker, MemoryLocker
from .stores import DataStore, FileStore, Upload
from .types import UploadInfo

__all__ = [
    "Config",
    "CorsConfig",
    "DataStore",
    "FileLocker",
    "FileStore",
    "Locker",
    "MemoryLocker",
    "TusApp",
    "TusError",
    "Upload",
    "UploadInfo",
    "__version__",
]
