"""What a store is: the core protocols every store implements, and the optional capabilities beside them.

A store knows bytes and upload info, nothing about HTTP. The handler flows discover what a store can do with
``isinstance(store, Terminatable)`` and so on (the protocols are runtime-checkable), and advertise only that in
``Tus-Extension``; a store written by a user that implements just :class:`DataStore` works as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from ..info import UploadInfo


@runtime_checkable
class Upload(Protocol):
    """One upload in a store."""

    async def info(self) -> UploadInfo:
        """The current state; ``offset`` counts exactly the bytes that are stored."""
        ...

    async def write(self, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """Store ``chunks`` starting at ``offset`` and return how many bytes were stored.

        The chunks end early (without an exception) when the request is interrupted; every byte received up to
        then must be stored. On a storage error the exception propagates; the stored offset must stay truthful.
        """
        ...

    def reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The stored bytes from ``start`` up to ``end`` (exclusive; None for all that is stored).

        An upload class whose bytes cannot be read before it is finished (S3's multipart parts) sets the class
        attribute ``readable_while_incomplete = False``; GET then answers 400 ``ERR_INCOMPLETE_UPLOAD``.
        """
        ...

    async def finish(self) -> None:
        """Called once, when the last byte is stored."""
        ...


@runtime_checkable
class DataStore(Protocol):
    """The core of every store."""

    async def create(self, info: UploadInfo) -> Upload:
        """Create an upload. ``info.id`` may be preset (by a hook); the store picks one when it is empty."""
        ...

    async def get(self, upload_id: str) -> Upload:
        """The upload with that ID; raises ``ERR_UPLOAD_NOT_FOUND`` when there is none."""
        ...


@runtime_checkable
class Terminatable(Protocol):
    """The store can delete an upload (tus termination extension)."""

    async def terminate(self, upload: Upload) -> None: ...


@runtime_checkable
class LengthDeferrable(Protocol):
    """The store can create an upload whose length is declared later (creation-defer-length)."""

    async def declare_length(self, upload: Upload, length: int) -> None: ...


@runtime_checkable
class Concatenatable(Protocol):
    """The store can concatenate finished partial uploads into a final one (concatenation)."""

    async def concat(self, final: Upload, partials: Sequence[Upload]) -> None: ...


@runtime_checkable
class Verifiable(Protocol):
    """The store can write a chunk all-or-nothing: kept only if ``verify`` accepts it (checksum extension).

    ``await verify(written)`` is called after the chunks end (it may read the written bytes back through
    ``upload.reader``); when it returns False, or the write fails, every byte of
    the chunk is discarded and the offset stays where it was, also if the process dies before the decision.
    """

    async def write_verified(
        self, upload: Upload, offset: int, chunks: AsyncIterable[bytes], verify: Callable[[int], Awaitable[bool]]
    ) -> int: ...


@runtime_checkable
class Listable(Protocol):
    """The store can enumerate its uploads (``pytusd list``, the expiration cleaner)."""

    def upload_ids(self) -> AsyncIterator[str]:
        """The ID of every upload in the store, in no particular order."""
        ...


@runtime_checkable
class Expiring(Protocol):
    """The store can remove an expired upload and remember it, so that later requests get 410 (expiration)."""

    async def expire(self, upload: Upload) -> None: ...

    def upload_ids(self) -> AsyncIterator[str]:
        """Every upload in the store (for the cleaner)."""
        ...

    async def forget_expired(self, older_than: float) -> int:
        """Drop the memory of uploads that expired before the timestamp ``older_than``; return how many."""
        ...


@runtime_checkable
class Timestamped(Protocol):
    """The upload knows when its data last changed (used for Last-Modified and conditional GET)."""

    async def modified_time(self) -> float: ...


@runtime_checkable
class Ready(Protocol):
    """The store can tell cheaply whether it is usable (``/ready``): ``ready()`` returns, or raises saying why not.

    A store without it is asked for an upload that does not exist instead, which must answer "not found"."""

    async def ready(self) -> None: ...
