"""What a locker is.

Every request that reads or changes an upload holds that upload's lock. A request that needs a lock somebody else
holds asks the holder to let go (``on_release_request`` of the holder is called); the holder stops reading its body,
stores what it has and unlocks, and the newcomer proceeds. This is tusd v2's handover: a client that lost its
connection and resumes is never locked out by its own dead request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

ReleaseRequest = Callable[[], None]


@runtime_checkable
class Lock(Protocol):
    async def release(self) -> None: ...


@runtime_checkable
class Locker(Protocol):
    async def acquire(self, upload_id: str, on_release_request: ReleaseRequest, timeout: float) -> Lock:
        """Wait up to ``timeout`` seconds for the upload's lock; raise ``ERR_LOCK_TIMEOUT`` after that.

        While it waits, it asks the current holder to release. ``on_release_request`` is called (at most once per
        waiter, from the event loop) when somebody else wants this lock.
        """
        ...

    async def try_acquire(self, upload_id: str) -> Lock | None:
        """The lock if it is free right now, else None; never asks a holder to let go (for housekeeping)."""
        ...


@runtime_checkable
class ReadyLocker(Protocol):
    """Optional: the locker can tell cheaply whether it works (``/ready``); ``ready()`` raises saying why not.
    A locker without it (MemoryLocker) is always ready."""

    async def ready(self) -> None: ...


async def probe(locker: Locker) -> None:
    """Whether the locker works (``/ready``, the start-up checks): its ``ready()``; one without it always does."""
    if isinstance(locker, ReadyLocker):
        await locker.ready()
