"""What a store is: the core protocols every store and upload implement, and the optional capabilities beside them.

A store knows bytes and upload info, nothing about HTTP. What an upload can do beyond :class:`Upload` is a method
of the upload itself (``await upload.terminate()``, ``await final.concat(partials)``, ...; the protocols below).
Which of them a store's uploads have is declared once, by the store, as :class:`Capabilities` in its
``capabilities`` attribute, so that the server knows it before any upload exists (``Tus-Extension`` is advertised
at start-up). The handler flows read it through :func:`capabilities` only; a store written by a user that implements
just :class:`DataStore` declares nothing and gets nothing optional, and works as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .. import errors
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

        A store whose bytes cannot be read before an upload is finished (S3's multipart parts) declares
        ``Capabilities(readable_while_incomplete=False)``; GET then answers 400 ``ERR_INCOMPLETE_UPLOAD``.
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


# --- what an upload can do beyond the core -------------------------------------------------------------------------


@runtime_checkable
class Terminatable(Upload, Protocol):
    """The upload can be deleted (tus termination extension)."""

    async def terminate(self) -> None: ...


@runtime_checkable
class LengthDeferrable(Upload, Protocol):
    """The upload's length can be declared after it was created (creation-defer-length)."""

    async def declare_length(self, length: int) -> None: ...


@runtime_checkable
class Concatenatable(Upload, Protocol):
    """The upload, a final one, can be filled with the bytes of finished partial uploads (concatenation).

    All-or-nothing and repeatable: a retry after a failure never appends on top of what an earlier attempt wrote."""

    async def concat(self, partials: Sequence[Upload]) -> None: ...


@runtime_checkable
class Verifiable(Upload, Protocol):
    """The upload can take a chunk all-or-nothing: kept only if ``verify`` accepts it (checksum extension).

    ``await verify(written)`` is called after the chunks end (it may read the written bytes back through
    :meth:`Upload.reader`); when it returns False, or the write fails, every byte of the chunk is discarded and the
    offset stays where it was, also if the process dies before the decision.
    """

    async def write_verified(
        self, offset: int, chunks: AsyncIterable[bytes], verify: Callable[[int], Awaitable[bool]]
    ) -> int: ...


@runtime_checkable
class Annotatable(Upload, Protocol):
    """The upload's info can carry notes of the server's beside the bytes (``--digest``'s running state and
    result): ``annotate`` sets (or, for None, removes) keys of its ``storage`` and stores the info, under the upload's
    lock. What :meth:`Upload.info` returns afterwards has them."""

    async def annotate(self, changes: Mapping[str, str | None]) -> None: ...


@runtime_checkable
class ReadPreparing(Upload, Protocol):
    """Reading the upload needs a change to the storage first (Azure: blocks a failed request staged must be
    committed to be readable). ``prepare_read`` makes it; GET calls it while it holds the upload's lock, before it
    lets go and streams, because such a change made later could undo a write that took the lock meanwhile."""

    async def prepare_read(self) -> None: ...


@runtime_checkable
class Expirable(Upload, Protocol):
    """The upload can be removed as expired and remembered, so that later requests get 410 (expiration)."""

    async def expire(self) -> None: ...


@runtime_checkable
class Timestamped(Upload, Protocol):
    """The upload knows when its data last changed (Last-Modified, conditional GET, expiration)."""

    async def modified_time(self) -> float: ...


# --- what a store can do beyond the core ---------------------------------------------------------------------------


@runtime_checkable
class Listable(Protocol):
    """The store can enumerate its uploads (``pytusd list``, the expiration cleaner)."""

    def upload_ids(self) -> AsyncIterator[str]:
        """The ID of every upload in the store, in no particular order."""
        ...


@runtime_checkable
class Expiring(DataStore, Protocol):
    """A store whose uploads expire (their half is :class:`Expirable`): what the cleaner works on."""

    def upload_ids(self) -> AsyncIterator[str]:
        """Every upload in the store (for the cleaner)."""
        ...

    async def forget_expired(self, older_than: float) -> int:
        """Drop the memory of uploads that expired before the timestamp ``older_than``; return how many."""
        ...


@runtime_checkable
class Reclaiming(Protocol):
    """The storage can remove an upload's data by itself (S3: a lifecycle rule aborts an incomplete multipart
    upload), so that an upload is listed but lost: ``get`` answers "not found" while objects of it are left.
    ``reclaim(upload_id)`` removes them and returns True when the upload is lost, else does nothing and returns
    False. The cleaner calls it, under the upload's lock, for each listed upload that ``get`` does not find."""

    async def reclaim(self, upload_id: str) -> bool: ...


@runtime_checkable
class Ready(Protocol):
    """The store can tell cheaply whether it is usable (``/ready``): ``ready()`` returns, or raises saying why not.

    A store without it is asked for an upload that does not exist instead, which must answer "not found"."""

    async def ready(self) -> None: ...


@runtime_checkable
class Prepared(Protocol):
    """The store sets itself up, once and synchronously, when an app is made with it (FileStore: its directory)."""

    def prepare(self) -> None: ...


def prepare(store: DataStore) -> None:
    """Let the store set itself up when it is :class:`Prepared`; other stores need nothing."""
    if isinstance(store, Prepared):
        store.prepare()


# The upload ID a store without ready() is asked for, which must answer "not found" (a 404 or 410 TusError).
READY_PROBE_ID = "pytusd-readiness-probe"


async def probe(store: DataStore) -> None:
    """Whether the store is usable (``/ready``, the start-up checks): returns, or raises saying why not.

    Its :class:`Ready` ``ready()`` when it has one, else a ``get`` of an upload that does not exist."""
    if isinstance(store, Ready):
        await store.ready()
        return
    try:
        await store.get(READY_PROBE_ID)
    except errors.TusError as exc:
        if not exc.is_(errors.ERR_UPLOAD_NOT_FOUND, errors.ERR_UPLOAD_EXPIRED):
            raise


# --- declaring and finding the capabilities ------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a store's uploads can do beyond :class:`Upload`, declared by the store as ``capabilities``.

    Each flag promises that every upload the store returns implements the protocol named beside it (the store
    contract tests check it). ``expire`` also promises that the store is :class:`Expiring`.
    ``readable_while_incomplete`` is no extension: False says that an unfinished upload's bytes cannot be read.
    """

    terminate: bool = False  # Terminatable
    declare_length: bool = False  # LengthDeferrable
    concat: bool = False  # Concatenatable
    write_verified: bool = False  # Verifiable
    expire: bool = False  # Expirable uploads, an Expiring store
    modified_time: bool = False  # Timestamped
    annotate: bool = False  # Annotatable
    prepare_read: bool = False  # ReadPreparing
    reclaim: bool = False  # a Reclaiming store (its lost uploads are removed by the expiration cleaner)
    readable_while_incomplete: bool = True


NOTHING_OPTIONAL = Capabilities()


def capabilities(store: DataStore) -> Capabilities:
    """What the store's uploads can do: its declared ``capabilities``, or nothing optional when it declares none."""
    declared = getattr(store, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else NOTHING_OPTIONAL


def expiring(store: DataStore) -> Expiring | None:
    """The store as one whose uploads expire, or None when it does not declare ``expire``."""
    if not capabilities(store).expire:
        return None
    if not isinstance(store, Expiring):
        raise TypeError(f"{store!r} declares expire but has no upload_ids() and forget_expired()")
    return store


def reclaiming(store: DataStore) -> Reclaiming | None:
    """The store as one whose lost uploads can be reclaimed, or None when it does not declare ``reclaim``."""
    if not capabilities(store).reclaim:
        return None
    if not isinstance(store, Reclaiming):
        raise TypeError(f"{store!r} declares reclaim but has no reclaim()")
    return store


def _undeclared(upload: Upload, capability: str) -> errors.TusError:
    return errors.ERR_INTERNAL_SERVER_ERROR(f"{type(upload).__name__} has no {capability}() its store declared")


# The typed way to an optional method, once the store's Capabilities said the upload has it.


def terminatable(upload: Upload) -> Terminatable:
    if isinstance(upload, Terminatable):
        return upload
    raise _undeclared(upload, "terminate")


def length_deferrable(upload: Upload) -> LengthDeferrable:
    if isinstance(upload, LengthDeferrable):
        return upload
    raise _undeclared(upload, "declare_length")


def concatenatable(upload: Upload) -> Concatenatable:
    if isinstance(upload, Concatenatable):
        return upload
    raise _undeclared(upload, "concat")


def verifiable(upload: Upload) -> Verifiable:
    if isinstance(upload, Verifiable):
        return upload
    raise _undeclared(upload, "write_verified")


def annotatable(upload: Upload) -> Annotatable:
    if isinstance(upload, Annotatable):
        return upload
    raise _undeclared(upload, "annotate")


def read_preparing(upload: Upload) -> ReadPreparing:
    if isinstance(upload, ReadPreparing):
        return upload
    raise _undeclared(upload, "prepare_read")


def expirable(upload: Upload) -> Expirable:
    if isinstance(upload, Expirable):
        return upload
    raise _undeclared(upload, "expire")


def timestamped(upload: Upload) -> Timestamped:
    if isinstance(upload, Timestamped):
        return upload
    raise _undeclared(upload, "modified_time")
