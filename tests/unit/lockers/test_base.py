"""What every locker must do, on MemoryLocker and FileLocker (inline and in threads): exclusive per upload, handover
on request, timeouts, an idempotent release. FileLocker's own behaviour is in test_file.py, RedisLocker's in
test_redis.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from pytusd import FileLocker, MemoryLocker, errors


@pytest.fixture(params=["memory", "file", "file-threads"])
def locker(request, tmp_path):
    if request.param == "memory":
        return MemoryLocker()
    file_io = "threads" if request.param == "file-threads" else "inline"
    return FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02, file_io=file_io)


async def test_lock_is_exclusive_and_handed_over_on_request(locker):
    released = asyncio.Event()
    order: list[str] = []

    async def holder() -> None:
        lock = await locker.acquire("u1", released.set, 5)
        order.append("holder got it")
        await released.wait()  # holds until somebody asks
        order.append("holder lets go")
        await lock.release()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0.05)
    lock = await locker.acquire("u1", lambda: None, 5)
    order.append("newcomer got it")
    await lock.release()
    await task
    assert order == ["holder got it", "holder lets go", "newcomer got it"]


async def test_different_uploads_do_not_block_each_other(locker):
    first = await locker.acquire("a", lambda: None, 1)
    second = await locker.acquire("b", lambda: None, 1)
    await first.release()
    await second.release()


async def test_holder_that_does_not_let_go_times_out_the_waiter(locker):
    asked = []
    lock = await locker.acquire("u2", lambda: asked.append(True), 5)
    started = time.monotonic()
    with pytest.raises(errors.TusError) as info:
        await locker.acquire("u2", lambda: None, 0.3)
    assert info.value.code == "ERR_LOCK_TIMEOUT" and info.value.status == 500
    assert 0.25 < time.monotonic() - started < 2
    assert asked  # the holder was asked
    await lock.release()
    again = await locker.acquire("u2", lambda: None, 1)
    await again.release()


async def test_release_is_idempotent(locker):
    lock = await locker.acquire("u3", lambda: None, 1)
    await lock.release()
    await lock.release()
    again = await locker.acquire("u3", lambda: None, 1)
    await again.release()
