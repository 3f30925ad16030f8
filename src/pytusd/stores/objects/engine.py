"""The upload engine of the object stores: one write, one finish, one loaded state, for S3, Azure Blob and GCS.

An upload in an object store is numbered pieces (S3 parts, Azure blocks, GCS chunk objects) plus, where the store has
a minimum piece size or a cap on their number, a tail object that holds the bytes after the last piece until there
are enough of them. :class:`PieceUpload` holds what every store does with them: check the offset, start the request
with the tail's bytes, cut the body into pieces while it arrives and upload them concurrently (:mod:`.spool`),
count only the pieces that run on without a gap, keep a short remainder as the tail, and, at the end, make the tail
the last piece and commit. A store subclasses it with its SDK calls and names: put a piece, put/read/delete the
tail, commit, put the info, load the state. Nothing is kept between requests: each one loads the state anew.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Generic, Protocol, TypeVar

from ... import errors
from ...info import UploadInfo
from .plan import PiecePlan
from .spool import PieceWriter, contiguous, feed_body


class Piece(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def size(self) -> int: ...


P = TypeVar("P", bound=Piece)
S = TypeVar("S", bound="State[Any]")
S_co = TypeVar("S_co", bound="State[Any]", covariant=True)
U_contra = TypeVar("U_contra", contravariant=True)
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@dataclass
class State(Generic[P]):
    """An upload as loaded from the storage: its info, the pieces that count, the tail object."""

    info: UploadInfo
    pieces: list[P] = field(default_factory=list)  # numbered without a gap
    next_number: int = 1  # the number the next piece gets
    tail_size: int = 0
    stale_tail: bool = False  # a tail object exists whose bytes are in a piece already
    completed: bool = False  # committed: the pieces are one object now
    completed_size: int = 0
    info_modified: float = 0.0

    @property
    def pieces_size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def offset(self) -> int:
        return self.completed_size if self.completed else self.pieces_size + self.tail_size

    def adopt_tail(self, size: int, start: int | None, unmarked_counts: bool = False) -> None:
        """A tail object of ``size`` bytes that records it starts at byte ``start``. It counts when it starts where
        the pieces end; one whose bytes went into a piece since (a crash between the two steps) is stale, so
        nothing is counted twice. ``unmarked_counts``: a tail without the record (tusd's) counts too."""
        if not size:
            return
        if start == self.pieces_size or (start is None and unmarked_counts):
            self.tail_size = size
        else:
            self.stale_tail = True


@dataclass(frozen=True)
class StoreNames:
    """A store's words in log lines and errors."""

    service: str  # "S3"
    piece: str  # "part"
    tail: str  # "the tail object" ("" for a store without one)
    log: logging.Logger
    summary: Callable[[BaseException], str] = str  # a storage error in one line


class PieceStore(Protocol[U_contra, S_co]):
    """What the engine asks of the store an upload lives in (its uploads hold the rest of the SDK calls)."""

    @property
    def plan(self) -> PiecePlan: ...

    @property
    def temp_dir(self) -> str | None: ...

    async def _load(self, upload: U_contra) -> S_co: ...

    async def _terminate(self, upload: U_contra) -> None: ...


def storage_error(
    exc: BaseException, service: str, summary: Callable[[BaseException], str] = str
) -> errors.TusError:
    """What a client is told about a failed storage call: 503 with Retry-After when the storage cannot be reached
    (one log line), else 500 with the error in one line."""
    if isinstance(exc, errors.TusError):
        return exc
    if errors.unreachable(exc):
        return errors.unavailable(errors.ERR_STORAGE_UNAVAILABLE, f"the {service} storage", exc)
    return errors.ERR_INTERNAL_SERVER_ERROR(f"{service} error: {summary(exc)}")


async def read_ahead(
    fetch: Callable[[int, int], Awaitable[bytes]], start: int, stop: int, block: int
) -> AsyncGenerator[bytes, None]:
    """Bytes ``start`` up to ``stop`` of an object, one ranged ``fetch(first, stop)`` per ``block`` bytes, the next
    one under way while the current one is passed on (the SDKs would hold a whole download in memory)."""

    def begin(first: int) -> asyncio.Future[bytes] | None:
        if first >= stop:
            return None
        return asyncio.ensure_future(fetch(first, min(stop, first + block)))

    pending = begin(start)
    position = start
    try:
        while pending is not None:
            current = pending
            position = min(stop, position + block)
            pending = begin(position)
            yield await current
    finally:  # the reader stopped early (the client went away): drop the block fetched ahead
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


SPOOL_BLOCK = 1 << 20  # bytes per read from a local spool file


async def _blocks_of(spool: IO[bytes], size: int) -> AsyncIterator[bytes]:
    """``size`` bytes from the spool's current position, a block at a time."""
    while size > 0:
        block = spool.read(min(SPOOL_BLOCK, size))
        if not block:
            break
        size -= len(block)
        yield block


class PieceUpload(ABC, Generic[P, S]):
    """One upload in an object store; its state is read from the storage once per request (under its lock).

    A store implements the abstract methods with its SDK calls; the tail methods only where its plan can leave a
    remainder out of the pieces (a minimum piece size or a cap on their number)."""

    names: ClassVar[StoreNames]

    def __init__(self, store: PieceStore[Any, S], upload_id: str, state: S | None, *, max_buffered: int) -> None:
        self._store = store
        self.id = upload_id
        self._state = state
        self._max_buffered = max(1, max_buffered)
        self._verifying: tuple[IO[bytes], int, int] | None = None  # (spool, offset, size) of a chunk being verified

    # -- what a store implements -----------------------------------------------------------------------------------

    @abstractmethod
    async def _put_piece(self, state: S, number: int, start: int, spool: IO[bytes] | None, size: int) -> P:
        """Store piece ``number`` (its first byte is byte ``start`` of the upload; None: an empty piece)."""

    @abstractmethod
    async def _put_info(self, info: UploadInfo) -> None: ...

    async def _commit(self, state: S, pieces: list[P]) -> None:
        """Make ``pieces`` (the tail's last piece included) the finished object; may add to ``pieces``."""
        raise NotImplementedError(f"{type(self).__name__} finishes on its own")

    async def _put_tail(self, spool: IO[bytes], starts_at: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no tail object")

    def _tail_bytes(self, size: int) -> AsyncIterator[bytes]:
        raise NotImplementedError(f"{type(self).__name__} has no tail object")

    async def _delete_tail(self) -> None:
        """Remove the tail object; housekeeping, so it logs instead of failing (a stale tail is ignored anyway)."""

    async def _before_pieces(self, state: S) -> None:
        """Called before new pieces are numbered: refuse or tidy up what the next pieces must not meet."""

    async def _pieces_stored(self, state: S) -> None:
        """Called at the end of a write once ``state.pieces`` holds the pieces that count, before the tail object
        is written or removed (Azure commits the blocks here, so that its blob holds the bytes stored so far)."""

    def _chain(self, state: S, pieces: list[P]) -> tuple[list[P], int]:
        """The pieces that count, and the number the next one gets."""
        run = contiguous(pieces)
        return run, len(run) + 1

    def _spool_md5(self) -> bool:
        """Whether each piece's MD5 is computed while it is spooled (:func:`.spool.spool_md5`), for a store that
        sends it with the piece."""
        return False

    def _check_length(self, state: S, length: int) -> None:
        self.plan.check_length(length)

    def _storage_error(self, exc: BaseException) -> errors.TusError:
        return storage_error(exc, self.names.service, self.names.summary)

    # -- the engine -----------------------------------------------------------------------------------------------

    @property
    def plan(self) -> PiecePlan:
        return self._store.plan

    async def state(self) -> S:
        if self._state is None:
            self._state = await self._store._load(self)
        return self._state

    async def info(self) -> UploadInfo:
        state = await self.state()
        return state.info.replace(offset=state.offset)

    def _parse_info(self, raw: tuple[bytes, float] | None) -> tuple[UploadInfo, float]:
        """The ``.info`` object's upload info and when it was written, from its bytes and time (None: missing); an
        ``.info`` reached under another upload's name is not this one."""
        if raw is None:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        info = UploadInfo.from_json(raw[0])
        if info.id != self.id:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        return info, raw[1]

    async def _gather(self, a: Awaitable[A], b: Awaitable[B], c: Awaitable[C]) -> tuple[A, B, C]:
        """Three storage calls at once (loading the state), their errors as the client is told them."""
        try:
            return await asyncio.gather(a, b, c)
        except Exception as exc:
            raise self._storage_error(exc) from exc

    def _writer(self, state: S, piece_size: Callable[[int, int], int], max_buffered: int) -> PieceWriter[P]:
        return PieceWriter(
            functools.partial(self._put_piece, state),
            first_number=state.next_number,
            first_byte=state.pieces_size,
            piece_size=piece_size,
            max_buffered=max_buffered,
            temp_dir=self._store.temp_dir,
            md5=self._spool_md5(),
        )

    async def _tail(self, expected: int) -> AsyncIterator[bytes]:
        received = 0
        async for block in self._tail_bytes(expected):
            received += len(block)
            yield block
        if received != expected:
            raise errors.ERR_INTERNAL_SERVER_ERROR(f"{self.names.tail} changed while it was read")

    async def write(self, offset: int, chunks: AsyncIterable[bytes]) -> int:
        state = await self.state()
        if offset != state.offset:
            raise errors.ERR_MISMATCHED_OFFSET()
        await self._before_pieces(state)
        plan = self.plan
        length = None if state.info.size_is_deferred else state.info.size
        writer = self._writer(state, lambda number, start: plan.size_of(number, length, start), self._max_buffered)
        new_tail = None
        try:
            if state.tail_size:
                await writer.prepend(self._tail(state.tail_size))
            body_error = await feed_body(chunks, writer.feed)
            # The rest: a piece of its own (the upload's end, or a short piece there is room for), else the tail.
            remainder = writer.spool_size
            if not remainder:
                leftover = writer.detach()
                if leftover is not None:
                    leftover.close()
            elif plan.remainder_is_piece(writer.next_number, remainder, writer.position + remainder, length):
                writer.dispatch()
            else:
                new_tail = writer.detach()
            new_pieces = await writer.settle()
            pieces, next_number = self._chain(state, [*state.pieces, *new_pieces])
            if len(pieces) != len(state.pieces) + len(new_pieces):
                raise errors.ERR_INTERNAL_SERVER_ERROR(f"a {self.names.piece} upload went missing")
            state.pieces, state.next_number = pieces, next_number
            await self._pieces_stored(state)
            if new_tail is not None:
                await self._put_tail(new_tail, state.pieces_size)
                state.tail_size, state.stale_tail = remainder, False
            elif state.tail_size or state.stale_tail:
                # The tail's bytes are in a piece now (or were already): the tail object is stale, remove it.
                state.tail_size, state.stale_tail = 0, True
                await self._delete_tail()
                state.stale_tail = False
        except BaseException as exc:
            await writer.abandon()
            self._state = None  # the truth is in the storage: read it again
            if isinstance(exc, Exception):
                if not errors.unreachable(exc):  # else _storage_error logs the one line
                    self.names.log.warning("upload %s: %s write failed: %s", self.id, self.names.service, exc)
                raise self._storage_error(exc) from exc
            raise
        finally:
            if new_tail is not None:
                new_tail.close()
        if body_error is not None:
            raise body_error
        return state.offset - offset

    async def finish(self) -> None:
        state = await self.state()
        if state.completed:
            return
        pieces = list(state.pieces)
        try:
            if state.tail_size:  # a deferred length declared after the last bytes: the tail is the last piece
                await self._before_pieces(state)
                tail_size = state.tail_size
                writer = self._writer(state, lambda number, start: tail_size, 1)
                await writer.prepend(self._tail(tail_size))
                writer.dispatch()
                pieces.extend(await writer.settle())
            await self._commit(state, pieces)
        except Exception as exc:
            self._state = None
            raise self._storage_error(exc) from exc
        state.pieces, state.completed, state.completed_size = pieces, True, sum(p.size for p in pieces)
        if state.tail_size or state.stale_tail:
            await self._delete_tail()
            state.tail_size, state.stale_tail = 0, False

    async def write_verified(
        self, offset: int, chunks: AsyncIterable[bytes], verify: Callable[[int], Awaitable[bool]]
    ) -> int:
        """A chunk all-or-nothing (checksum extension): it is spooled to a local temporary file first and nothing
        of it reaches the storage before ``verify`` accepted it, so a chunk that fails, or whose process dies before
        the decision, leaves no piece or tail that a later load could count. While ``verify`` runs, the upload's
        ``reader`` serves the chunk's range from the spool (checksum-trailer hashes it from there: an unfinished
        upload's parts cannot be read back on every service). The accepted chunk is then written as :meth:`write`
        does; should the storage fail in the middle, only verified bytes that were stored are counted."""
        state = await self.state()
        if offset != state.offset:
            raise errors.ERR_MISMATCHED_OFFSET()
        with tempfile.TemporaryFile(dir=self._store.temp_dir, prefix="pytusd-") as spool:
            received = 0
            async for chunk in chunks:  # an exception here leaves nothing stored: it propagates
                spool.write(chunk)
                received += len(chunk)
            if not await self._verify_spooled(spool, offset, received, verify):
                return 0
            spool.seek(0)
            return await self.write(offset, _blocks_of(spool, received))

    async def _verify_spooled(
        self, spool: IO[bytes], offset: int, size: int, verify: Callable[[int], Awaitable[bool]]
    ) -> bool:
        self._verifying = (spool, offset, size)
        try:
            return await verify(size)
        finally:
            self._verifying = None

    def reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The upload's bytes from ``start`` to ``end``: from the storage (:meth:`stored_reader`), and while a
        verified chunk awaits its decision, that chunk's range from its local spool."""
        if self._verifying is None:
            return self.stored_reader(start, end)
        return self._spooled_reader(*self._verifying, start, end)

    async def _spooled_reader(
        self, spool: IO[bytes], offset: int, size: int, start: int, end: int | None
    ) -> AsyncIterator[bytes]:
        stop = offset + size if end is None else min(end, offset + size)
        if start < offset:  # bytes before the chunk: from the storage
            async for block in self.stored_reader(start, min(stop, offset)):
                yield block
            start = offset
        spool.seek(start - offset)
        async for block in _blocks_of(spool, max(0, stop - start)):
            yield block

    @abstractmethod
    def stored_reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The stored bytes from ``start`` to ``end`` (each store's own reads)."""

    async def terminate(self) -> None:
        await self._store._terminate(self)

    async def declare_length(self, length: int) -> None:
        state = await self.state()
        self._check_length(state, length)
        await self._save_info(state, state.info.replace(size=length, size_is_deferred=False))

    async def annotate(self, changes: Mapping[str, str | None]) -> None:
        state = await self.state()
        await self._save_info(state, state.info.with_storage(changes))

    async def _save_info(self, state: S, info: UploadInfo) -> None:
        try:
            await self._put_info(info)
        except Exception as exc:
            raise self._storage_error(exc) from exc
        state.info = info
