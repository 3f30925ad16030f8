"""MemoryLocker: per-upload locks inside one process."""

from __future__ import annotations

import asyncio

from .. import errors
from .base import ReleaseRequest


class _Held:
    __slots__ = ("released", "on_release_request", "asked")

    def __init__(self, on_release_request: ReleaseRequest) -> None:
        self.released = asyncio.Event()
        self.on_release_request = on_release_request
        self.asked = False

    def ask(self) -> None:
        if not self.asked:
            self.asked = True
            self.on_release_request()


class MemoryLock:
    __slots__ = ("_locker", "_id", "_held")

    def __init__(self, locker: MemoryLocker, upload_id: str, held: _Held) -> None:
        self._locker = locker
        self._id = upload_id
        self._held = held

    async def release(self) -> None:
        if self._locker._held.get(self._id) is self._held:
            del self._locker._held[self._id]
        self._held.released.set()


class MemoryLocker:
    """Locks held in this process only: right for one server process; use FileLocker or a shared locker when
    several processes serve the same uploads."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def __repr__(self) -> str:
        return "MemoryLocker(this process only)"

    async def acquire(self, upload_id: str, on_release_request: ReleaseRequest, timeout: float) -> MemoryLock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (current := self._held.get(upload_id)) is not None:
            current.ask()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.ERR_LOCK_TIMEOUT()
            try:
                async with asyncio.timeout(remaining):
                    await current.released.wait()
            except TimeoutError:
                raise errors.ERR_LOCK_TIMEOUT() from None
        held = _Held(on_release_request)
        self._held[upload_id] = held
        return MemoryLock(self, upload_id, held)

    async def try_acquire(self, upload_id: str) -> MemoryLock | None:
        if upload_id in self._held:
            return None
        held = _Held(lambda: None)
        self._held[upload_id] = held
        return MemoryLock(self, upload_id, held)
