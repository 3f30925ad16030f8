"""Per-upload locks: in memory (one process) or on disk (several processes on one host)."""

from .base import Lock, Locker, ReleaseRequest
from .file import FileLocker
from .memory import MemoryLocker

__all__ = ["FileLocker", "Lock", "Locker", "MemoryLocker", "ReleaseRequest"]
