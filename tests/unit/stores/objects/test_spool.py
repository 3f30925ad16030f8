"""The piece machinery of the object stores (src/pytusd/stores/objects/spool.py), without a backend."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import pytest

from pytusd.stores.objects.spool import gather_all


@contextlib.asynccontextmanager
async def unretrieved_exceptions() -> AsyncIterator[list[dict]]:
    """What asyncio reports to the loop's exception handler inside the block (after collecting the garbage)."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        yield reported
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)


async def test_every_failure_of_concurrent_pieces_is_retrieved():
    """Several pieces fail: the first failure is raised and the others are consumed, so that asyncio never logs
    "Task exception was never retrieved" for them (a log line per failed piece, blaming nothing)."""
    async def fails(n: int, delay: float) -> int:
        await asyncio.sleep(delay)
        raise OSError(f"piece {n} failed")

    async with unretrieved_exceptions() as unretrieved:
        with pytest.raises(OSError, match="piece 1 failed"):
            await gather_all([fails(1, 0.01), fails(2, 0.0), fails(3, 0.02)])
    assert unretrieved == []


async def test_the_results_come_in_order():
    async def value(n: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return n

    assert await gather_all([value(1, 0.02), value(2, 0.0), value(3, 0.01)]) == [1, 2, 3]


async def test_an_abandoned_writer_retrieves_its_pieces_failures(tmp_path):
    """A request that fails for its own reason abandons the writer: the pieces that failed meanwhile are not left
    for asyncio to complain about."""
    from pytusd.stores.objects.spool import PieceWriter

    async def upload(number, start, spool, size):
        raise OSError(f"piece {number} failed")

    async with unretrieved_exceptions() as unretrieved:
        writer = PieceWriter(upload, first_number=1, first_byte=0, piece_size=lambda number, start: 4, max_buffered=3,
                             temp_dir=str(tmp_path))
        await writer.feed(b"12345678")
        await writer.abandon()
        del writer
    assert unretrieved == []
