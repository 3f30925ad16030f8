"""Per-upload locks: in memory (one process), on disk (several processes on one host) or in Redis (many hosts).

``RedisLocker`` is imported on first use, so that the optional ``redis`` package (the ``redis`` extra)
is needed only by those who use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Lock, Locker, ReleaseRequest
from .file import FileLocker
from .memory import MemoryLocker

if TYPE_CHECKING:
    from .redis import RedisLocker as RedisLocker

# RedisLocker is not in __all__: ``from pytusd.lockers import *`` must not need redis.
__all__ = ["FileLocker", "Lock", "Locker", "MemoryLocker", "ReleaseRequest"]


def __getattr__(name: str) -> Any:
    if name == "RedisLocker":
        from .redis import RedisLocker

        return RedisLocker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
