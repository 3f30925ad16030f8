"""FileLocker (flock on <dir>/<id>.lock): no files left behind, IDs that could escape refused, the lock of a killed
process free, handover across two lockers and to a holder in the same process, one timer asking only the wanted
holder (in every event loop), stale release requests ignored."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from pytusd import FileLocker, errors


async def test_file_lock_leaves_no_files_behind(tmp_path):
    locker = FileLocker(tmp_path, holder_poll_interval=0.05)
    lock = await locker.acquire("abc", lambda: None, 1)
    assert (tmp_path / "abc.lock").exists()
    await lock.release()
    assert list(tmp_path.iterdir()) == []


async def test_file_lock_refuses_ids_that_could_escape(tmp_path):
    locker = FileLocker(tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    for bad in ("../x", "/etc/passwd", "a/../../b", ".."):
        with pytest.raises(errors.TusError) as info:
            await locker.acquire(bad, lambda: None, 0.1)
        assert info.value.status == 404
    assert not (tmp_path / "x.lock").exists()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


async def test_file_lock_of_a_killed_process_is_free(tmp_path):
    """Another process holds the lock and dies without unlocking: the kernel frees it, nobody waits forever."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "dead.lock")], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    locker = FileLocker(tmp_path, acquirer_poll_interval=0.02)
    with pytest.raises(errors.TusError):
        await locker.acquire("dead", lambda: None, 0.2)
    assert (tmp_path / "dead.stop").exists()  # the waiter asked the holder to let go
    proc.kill()
    proc.wait()
    lock = await locker.acquire("dead", lambda: None, 2)
    assert not (tmp_path / "dead.stop").exists()
    await lock.release()


async def test_file_lock_handover_across_two_lockers(tmp_path):
    """Two FileLocker objects (as in two processes) on one directory exclude each other and hand over."""
    a = FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02)
    b = FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02)
    asked = asyncio.Event()
    held = await a.acquire("shared", asked.set, 1)

    async def let_go_when_asked() -> None:
        await asked.wait()
        await held.release()

    task = asyncio.create_task(let_go_when_asked())
    started = time.monotonic()
    lock = await b.acquire("shared", lambda: None, 5)
    assert time.monotonic() - started < 2
    await task
    await lock.release()


async def test_file_locker_asks_a_holder_in_this_process_at_once(tmp_path):
    """Within one process the waiter asks the holder directly: no wait for the holder's next look at the .stop file
    (here 30 s away); other processes still find the .stop file."""
    locker = FileLocker(tmp_path, holder_poll_interval=30.0, file_io="inline")
    (tmp_path / "abc.info").write_text("{}")
    asked = asyncio.Event()
    first = await locker.acquire("abc", asked.set, 5)

    async def let_go_when_asked() -> None:
        await asked.wait()
        await first.release()

    helper = asyncio.create_task(let_go_when_asked())
    started = time.monotonic()
    second = await locker.acquire("abc", lambda: None, 5)
    assert asked.is_set() and time.monotonic() - started < 5
    await second.release()
    await helper
    assert locker._holders == {}  # nothing left behind once released


@pytest.mark.parametrize("file_io", ["inline", "threads"])
async def test_file_locker_asks_only_the_holder_whose_upload_is_wanted(tmp_path, file_io):
    """One timer of the locker looks for the .stop files of every lock it holds: the holder of the wanted upload is
    asked, once; the others keep their locks and are never asked."""
    a = FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02, file_io=file_io)
    b = FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02, file_io=file_io)
    asked: list[str] = []
    held = {name: await a.acquire(name, lambda name=name: asked.append(name), 1) for name in ("one", "two", "three")}

    async def let_go_when_asked() -> None:
        while "two" not in asked:
            await asyncio.sleep(0.01)
        await held["two"].release()

    task = asyncio.create_task(let_go_when_asked())
    lock = await b.acquire("two", lambda: None, 5)
    await task
    await asyncio.sleep(0.2)  # a few more looks of a's timer: the other two are still not asked
    assert asked == ["two"]
    assert await b.try_acquire("one") is None and await b.try_acquire("three") is None
    for name in ("one", "three"):
        await held[name].release()
    await lock.release()
    assert a._holders == {} and b._holders == {}


def test_file_locker_keeps_looking_in_a_new_event_loop(tmp_path):
    """A locker outlives an event loop (a test run, an app restarted in-process): its timer of the closed loop is
    replaced, and a holder in the new loop is still asked to let go by another process's request."""
    locker = FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02)

    async def hold_briefly() -> None:
        lock = await locker.acquire("x", lambda: None, 1)
        await lock.release()

    asyncio.run(hold_briefly())  # leaves a timer in a loop that is then closed

    async def handover() -> float:
        other = FileLocker(tmp_path, holder_poll_interval=0.05, acquirer_poll_interval=0.02)
        asked = asyncio.Event()
        held = await locker.acquire("x", asked.set, 1)

        async def let_go_when_asked() -> None:
            await asked.wait()
            await held.release()

        task = asyncio.create_task(let_go_when_asked())
        started = time.monotonic()
        lock = await other.acquire("x", lambda: None, 5)
        await task
        await lock.release()
        return time.monotonic() - started

    assert asyncio.run(handover()) < 2


async def test_a_release_request_left_before_the_lock_was_taken_is_not_one_for_the_new_holder(tmp_path):
    """A .stop file a waiter left for an earlier holder is removed when the lock is taken: the new holder is not
    asked to let go by it."""
    (tmp_path / "old.stop").write_text("")
    locker = FileLocker(tmp_path, holder_poll_interval=0.02)
    asked: list[bool] = []
    lock = await locker.acquire("old", lambda: asked.append(True), 1)
    await asyncio.sleep(0.15)
    assert asked == [] and not (tmp_path / "old.stop").exists()
    await lock.release()
