"""Request bodies cut into spooled pieces, and blocking SDK calls off the event loop.

Object stores (S3, Azure Blob, GCS) receive an upload as numbered pieces (parts, blocks, chunk objects). A
:class:`PieceWriter` cuts a request body into such pieces while it arrives: each piece is spooled to an unnamed
temporary file and handed to an upload coroutine in the background; at most ``max_buffered`` spools exist at once
(the body waits for a slot, so a client faster than the storage is slowed down instead of buffered), and the store
bounds how many upload at once. The SDKs are blocking, so they run in thread pools (:class:`Blocking`): hashing and
sending release the GIL, and the event loop stays free for other uploads (measured in bench/NOTES.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import tempfile
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import IO, Any, Generic, Protocol, TypeVar

from ...fileio import settle
from ..base import Upload

T = TypeVar("T")
P = TypeVar("P")

READ_BLOCK = 1 << 20


class Blocking:
    """A thread pool for a blocking SDK; ``await blocking(fn, *args, **kwargs)`` runs ``fn`` in it.

    A caller cancelled meanwhile (lock handover, shutdown, the request completion timeout) still waits for the call
    to end before the cancellation goes on: a thread cannot be stopped, and a write that lands after the upload's
    lock has passed on (an ``.info`` PUT, say) could overwrite the next request's."""

    def __init__(self, workers: int, name: str) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), name)

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await settle(loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs)))


async def wait_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until every task is done, even if the caller is cancelled meanwhile (then re-raise the cancellation).

    An upload running in a thread cannot be stopped; a piece that lands after the upload's lock was released could
    overwrite a newer one, so a request never ends before its pieces did."""
    cancelled = False
    pending = [t for t in tasks if not t.done()]
    while pending:
        try:
            await asyncio.shield(asyncio.wait(pending))
        except asyncio.CancelledError:
            cancelled = True
        pending = [t for t in pending if not t.done()]
    if cancelled:
        raise asyncio.CancelledError()


_DIGESTS: weakref.WeakKeyDictionary[IO[bytes], bytes] = weakref.WeakKeyDictionary()


def spool_md5(spool: IO[bytes]) -> bytes | None:
    """The MD5 of a piece's spool, computed while it was written (a :class:`PieceWriter` with ``md5=True``), once
    it was dispatched or detached; None when it was not computed."""
    return _DIGESTS.get(spool)


class Numbered(Protocol):
    @property
    def number(self) -> int: ...


N = TypeVar("N", bound=Numbered)


def contiguous(pieces: Iterable[N]) -> list[N]:
    """The pieces numbered 1, 2, 3, ... without a gap. A piece whose upload failed leaves a gap; what follows it
    was stored out of order and is not part of the upload (it is overwritten later)."""
    result: list[N] = []
    for piece in sorted(pieces, key=lambda p: p.number):
        if piece.number != len(result) + 1:
            break
        result.append(piece)
    return result


async def feed_body(chunks: AsyncIterable[bytes], feed: Callable[[bytes], Awaitable[None]]) -> Exception | None:
    """Pass every chunk of a request body to ``feed``. When the body itself fails (the client broke the
    connection, a limit was hit), stop and return that error, so the caller stores what arrived and then reports
    it; errors of ``feed`` (the storage) propagate."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return None
        except Exception as exc:
            return exc
        await feed(chunk)


async def gather_all(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently and wait until every one ended (a thread cannot be stopped); then raise the first failure,
    else return the results in order."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    await wait_all(tasks)
    failure = first_failure(tasks)
    if failure is not None:
        raise failure
    return [t.result() for t in tasks]


def first_failure(tasks: list[asyncio.Task[Any]]) -> BaseException | None:
    """The first failure among ``tasks`` (done ones), in their order. Every other failure is retrieved too, so that
    asyncio does not log "Task exception was never retrieved" for pieces that failed beside the one reported."""
    failure: BaseException | None = None
    for task in tasks:
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        if failure is None:
            failure = error
    return failure


class PieceWriter(Generic[P]):
    """Cuts one request's bytes into numbered pieces and uploads them in the background.

    ``upload(number, start, spool, size)`` stores one piece, whose first byte is byte ``start`` of the upload
    (``spool`` is a file positioned anywhere; None for an empty piece), and returns what the store needs to remember
    about it. ``piece_size(number, start)`` is the size of full piece ``number``. Full pieces are dispatched as they
    fill; what is left when the body ends is the caller's to place (:meth:`dispatch` it as a short piece, or
    :meth:`detach` it).
    """

    def __init__(
        self,
        upload: Callable[[int, int, IO[bytes] | None, int], Awaitable[P]],
        *,
        first_number: int,
        first_byte: int,
        piece_size: Callable[[int, int], int],
        max_buffered: int,
        temp_dir: str | None = None,
        md5: bool = False,
    ) -> None:
        self._upload = upload
        self._md5 = md5
        self._hash: Any = None
        self._piece_size = piece_size
        self._temp_dir = temp_dir
        self._slots = asyncio.Semaphore(max(1, max_buffered))
        self._tasks: list[asyncio.Task[P]] = []
        self.next_number = first_number
        self.first_byte = first_byte
        self.dispatched = 0  # bytes handed to piece uploads by this writer
        self.spool: IO[bytes] | None = None
        self.spool_size = 0

    @property
    def position(self) -> int:
        """Where the piece being filled starts in the upload."""
        return self.first_byte + self.dispatched

    async def _new_spool(self) -> None:
        await self._slots.acquire()
        self.spool = tempfile.TemporaryFile(dir=self._temp_dir, prefix="pytusd-", buffering=0)
        self.spool_size = 0
        self._hash = hashlib.md5(usedforsecurity=False) if self._md5 else None

    def _seal(self, spool: IO[bytes]) -> None:
        """Record the spool's digest (:func:`spool_md5`) once no more bytes go into it."""
        if self._hash is not None:
            _DIGESTS[spool] = self._hash.digest()
            self._hash = None

    def _spool_write(self, data: bytes | memoryview) -> None:
        assert self.spool is not None
        if self._hash is not None:  # hashed here, while the bytes are at hand: not a second read of the spool
            self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[self.spool.write(view) :]
        self.spool_size += len(data)

    async def prepend(self, blocks: AsyncIterable[bytes]) -> int:
        """Start the next piece with these bytes (the tail object's); returns how many there were."""
        if self.spool is None:
            await self._new_spool()
        async for block in blocks:
            self._spool_write(block)
        return self.spool_size

    async def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            failure = first_failure([t for t in self._tasks if t.done()])
            if failure is not None:
                raise failure
            if self.spool is None:
                await self._new_spool()
            full = self._piece_size(self.next_number, self.position)
            room = full - self.spool_size
            self._spool_write(view[:room])
            view = view[room:]
            if self.spool_size >= full:
                self.dispatch()

    def dispatch(self) -> None:
        """Hand the current spool to a background upload as the next piece."""
        spool, size, number, start = self.spool, self.spool_size, self.next_number, self.position
        assert spool is not None
        self._seal(spool)
        self.spool, self.spool_size = None, 0
        self.next_number += 1
        self.dispatched += size

        async def run() -> P:
            try:
                return await self._upload(number, start, spool, size)
            finally:
                spool.close()
                self._slots.release()

        self._tasks.append(asyncio.get_running_loop().create_task(run()))

    def detach(self) -> IO[bytes] | None:
        """Take the current spool out of the writer (the caller closes it); None if there is none."""
        spool = self.spool
        if spool is not None:
            self._seal(spool)
            self.spool, self.spool_size = None, 0
            self._slots.release()
        return spool

    async def settle(self) -> list[P]:
        """Wait for every piece upload; raise the first failure once all of them ended. Results in piece order."""
        await wait_all(list(self._tasks))
        failure = first_failure(self._tasks)
        if failure is not None:
            raise failure
        return [t.result() for t in self._tasks]

    async def abandon(self) -> None:
        """After a failure: let running uploads end (their failures are retrieved, the caller reports its own), drop
        the spool."""
        await wait_all(list(self._tasks))
        first_failure(self._tasks)
        spool = self.detach()
        if spool is not None:
            spool.close()


async def concat_by_streaming(final: Upload, partials: Sequence[Upload]) -> None:
    """Concatenate by reading the partials and writing their bytes into ``final`` like a PATCH would.

    Resumable and idempotent: the write starts at the final's stored offset, skipping what an earlier attempt
    (a failed one, or another process's before it died) already stored, so nothing is ever written twice."""
    sizes = [(await p.info()).offset for p in partials]
    start = (await final.info()).offset

    async def chunks() -> AsyncIterator[bytes]:
        skip = start
        for partial, size in zip(partials, sizes, strict=True):
            if skip >= size:
                skip -= size
                continue
            async for block in partial.reader(skip, size):
                yield block
            skip = 0

    await final.write(start, chunks())
