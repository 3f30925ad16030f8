"""RedisLocker against a real redis-server: exclusive per upload, handover within and across processes, timeouts,
locks of killed processes expiring, lost locks stopping their holder, and mutual exclusion under stress."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from pytusd import errors
from pytusd.lockers import RedisLocker


MakeLocker = Callable[..., RedisLocker]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_locker(redis_url: str, prefix: str) -> AsyncIterator[MakeLocker]:
    """RedisLockers on the test's own prefix (each one stands for a server process); closed at the end."""
    made: list[RedisLocker] = []

    def make(url: str | None = None, **options: Any) -> RedisLocker:
        options.setdefault("prefix", prefix)
        locker = RedisLocker(url or redis_url, **options)
        made.append(locker)
        return locker

    yield make
    for locker in made:
        await locker.close()


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at (and tamper with) the keys behind the lockers' backs."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


class Counter:
    """An on_release_request that counts its calls and can be waited for."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()

    async def wait(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.event.wait()


# --- exclusion and handover ------------------------------------------------------------------------------------------


async def test_lock_is_exclusive_and_handed_over_within_one_locker(make_locker: MakeLocker) -> None:
    locker = make_locker()
    asked = Counter()
    holding = asyncio.Event()
    order: list[str] = []

    async def holder() -> None:
        lock = await locker.acquire("u1", asked, 5)
        order.append("holder got it")
        holding.set()
        await asked.event.wait()  # holds until somebody asks
        order.append("holder lets go")
        await lock.release()

    task = asyncio.create_task(holder())
    async with asyncio.timeout(5):
        await holding.wait()
    started = time.monotonic()
    lock = await locker.acquire("u1", lambda: None, 5)
    order.append("newcomer got it")
    assert time.monotonic() - started < 0.5
    await lock.release()
    await asyncio.wait_for(task, 5)
    assert order == ["holder got it", "holder lets go", "newcomer got it"]
    assert asked.calls == 1


async def test_handover_between_two_lockers(make_locker: MakeLocker, direct: aioredis.Redis, prefix: str) -> None:
    """Two RedisLockers with their own clients (two processes): the holder is asked, lets go, the newcomer has it."""
    a, b = make_locker(), make_locker()
    asked, newcomer_asked = Counter(), Counter()
    held = await a.acquire("shared", asked, 5)
    key = f"{prefix}:lock:shared"
    assert await direct.get(key) == held.token

    async def let_go_when_asked() -> float:
        await asked.event.wait()
        await asyncio.sleep(0.02)  # stores what it has
        await held.release()
        return time.monotonic()

    task = asyncio.create_task(let_go_when_asked())
    started = time.monotonic()
    lock = await b.acquire("shared", newcomer_asked, 5)
    got_it = time.monotonic()
    released_at = await asyncio.wait_for(task, 5)
    assert got_it - started < 0.5, "the whole handover takes well under a second"
    assert got_it >= released_at
    assert await direct.get(key) == lock.token
    await asyncio.sleep(0.1)
    assert asked.calls == 1
    assert newcomer_asked.calls == 0, "the waiter's own request never reaches it once it holds the lock"
    await lock.release()
    assert await direct.exists(key) == 0


async def test_holder_that_does_not_let_go_times_out_the_waiter(make_locker: MakeLocker, direct: aioredis.Redis,
                                                               prefix: str) -> None:
    a, b = make_locker(release_request_interval=0.2), make_locker(release_request_interval=0.2)
    asked = Counter()
    lock = await a.acquire("u2", asked, 5)
    started = time.monotonic()
    with pytest.raises(errors.TusError) as info:
        await b.acquire("u2", lambda: None, 0.7)
    assert info.value.code == "ERR_LOCK_TIMEOUT" and info.value.status == 500
    assert 0.65 < time.monotonic() - started < 2
    assert asked.calls == 1, "asked (repeatedly), but called at most once per lock"
    assert await direct.get(f"{prefix}:lock:u2") == lock.token
    await lock.release()
    again = await b.acquire("u2", lambda: None, 1)
    await again.release()


async def test_try_acquire_never_asks_the_holder(make_locker: MakeLocker) -> None:
    a, b = make_locker(), make_locker()
    asked = Counter()
    lock = await a.acquire("u3", asked, 5)
    assert await b.try_acquire("u3") is None
    assert await a.try_acquire("u3") is None
    await asyncio.sleep(0.1)
    assert asked.calls == 0
    await lock.release()
    free = await b.try_acquire("u3")
    assert free is not None
    assert await a.try_acquire("u3") is None
    await free.release()


async def test_different_uploads_and_idempotent_release(make_locker: MakeLocker) -> None:
    locker = make_locker()
    first = await locker.acquire("a", lambda: None, 1)
    second = await locker.acquire("b", lambda: None, 1)
    await first.release()
    await first.release()
    await second.release()
    again = await locker.acquire("a", lambda: None, 1)
    await again.release()


async def test_release_request_without_token_reaches_the_holder(make_locker: MakeLocker, direct: aioredis.Redis,
                                                               prefix: str) -> None:
    """``PUBLISH <prefix>:release <id>`` from any tool asks whoever holds the upload."""
    locker = make_locker()
    asked = Counter()
    lock = await locker.acquire("kick-me", asked, 1)
    await direct.publish(f"{prefix}:release", "kick-me")
    await asked.wait(1)
    await lock.release()


async def test_release_request_that_arrives_before_the_lock_is_registered(
    make_locker: MakeLocker, direct: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter's request may be read before the answer to the holder's own SET (both arrive at once): it is kept
    for a moment and reaches the lock it names as soon as that lock is registered."""
    import pytusd.lockers.redis as module

    locker = make_locker()
    warm = await locker.acquire("warm-up", lambda: None, 1)  # the subscription is up
    await warm.release()
    monkeypatch.setattr(module.secrets, "token_hex", lambda nbytes: "f" * 32)
    await direct.publish(f"{prefix}:release", "early " + "f" * 32)
    async with asyncio.timeout(5):
        while "f" * 32 not in locker._early:  # the subscription has read it
            await asyncio.sleep(0.01)
    asked = Counter()
    lock = await locker.acquire("early", asked, 1)
    await asked.wait(0.5)
    await lock.release()
    monkeypatch.undo()
    other = Counter()
    again = await locker.acquire("early", other, 1)
    await asyncio.sleep(0.05)
    assert other.calls == 0
    await again.release()


async def test_ids_that_are_not_upload_ids_are_refused(make_locker: MakeLocker) -> None:
    locker = make_locker()
    for bad in ("../x", "a b", "", "a\nb"):
        with pytest.raises(errors.TusError) as info:
            await locker.acquire(bad, lambda: None, 0.1)
        assert info.value.status == 404
        assert await locker.try_acquire(bad) is None


# --- keeping locks alive, and losing them -----------------------------------------------------------------------------


async def test_holder_renews_its_lock_past_the_ttl(make_locker: MakeLocker, direct: aioredis.Redis,
                                                   prefix: str) -> None:
    a, b = make_locker(ttl=0.3), make_locker(ttl=0.3)
    asked = Counter()
    lock = await a.acquire("long", asked, 1)
    await asyncio.sleep(0.7)
    assert await direct.get(f"{prefix}:lock:long") == lock.token
    assert 0 < await direct.pttl(f"{prefix}:lock:long") <= 300
    assert await b.try_acquire("long") is None
    assert asked.calls == 0
    await lock.release()
    assert await direct.exists(f"{prefix}:lock:long") == 0


HOLD_LOCK = """
import asyncio, sys
from pytusd.lockers import RedisLocker

async def main():
    locker = RedisLocker(sys.argv[1], prefix=sys.argv[2], ttl=1.0)
    await locker.acquire("crashed", lambda: None, 5)
    print("locked", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_lock_of_a_killed_process_expires_within_ttl(make_locker: MakeLocker, redis_url: str,
                                                           prefix: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLD_LOCK, redis_url, prefix,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            assert (await proc.stdout.readline()).strip() == b"locked"
        await asyncio.sleep(0.5)  # it has renewed its lock at least once
        locker = make_locker(ttl=1.0)
        assert await locker.try_acquire("crashed") is None
    finally:
        proc.send_signal(signal.SIGKILL)  # no release, no goodbye
        await proc.wait()
    killed = time.monotonic()
    assert await locker.try_acquire("crashed") is None  # not free at once
    lock = await locker.acquire("crashed", lambda: None, 5)
    assert time.monotonic() - killed < 1.5
    await lock.release()


@pytest.mark.parametrize("tamper", ["deleted", "taken"])
async def test_lost_lock_makes_its_holder_stop(make_locker: MakeLocker, direct: aioredis.Redis, prefix: str,
                                              tamper: str) -> None:
    locker = make_locker(ttl=0.6)
    asked = Counter()
    lock = await locker.acquire("lost", asked, 1)
    key = f"{prefix}:lock:lost"
    if tamper == "deleted":
        await direct.delete(key)
    else:
        await direct.set(key, "somebody-else", px=5000)
    started = time.monotonic()
    await asked.wait(1)
    assert time.monotonic() - started < 0.4  # at the next renewal (every ttl/3)
    await lock.release()
    await asyncio.sleep(0.3)
    assert asked.calls == 1
    if tamper == "taken":
        assert await direct.get(key) == "somebody-else", "releasing a lost lock leaves the new holder's key alone"
    else:
        assert await direct.exists(key) == 0


class Proxy:
    """A TCP proxy to redis-server that can stop answering (a hung network) or cut every connection (Redis down)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if not self.frozen:
                        sink.write(data)
                        await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("failure", ["hangs", "is down"])
async def test_holder_that_cannot_reach_redis_stops_before_its_lock_expires(
    make_locker: MakeLocker, redis_url: str, direct: aioredis.Redis, prefix: str, failure: str
) -> None:
    proxy = Proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    ttl = 0.6
    locker = make_locker(f"redis://127.0.0.1:{proxy.port}/0", ttl=ttl)
    asked = Counter()
    try:
        lock = await locker.acquire("cut-off", asked, 2)
        await asyncio.sleep(0.05)
        if failure == "hangs":
            proxy.frozen = True
        else:
            await proxy.cut()
        started = time.monotonic()
        await asked.wait(2 * ttl)
        # Asked while its key still exists: it stops before anyone else can take the upload.
        assert await direct.pttl(f"{prefix}:lock:cut-off") > 0
        assert time.monotonic() - started < ttl
        await lock.release()  # with Redis unreachable: logs, does not fail
    finally:
        await proxy.cut()


async def test_close_asks_holders_to_stop(make_locker: MakeLocker, direct: aioredis.Redis, prefix: str) -> None:
    locker = make_locker()
    asked = Counter()
    lock = await locker.acquire("closing", asked, 1)
    await locker.close()
    assert asked.calls == 1  # no longer kept alive
    await lock.release()
    assert 0 < await direct.pttl(f"{prefix}:lock:closing") <= 5000  # left to expire
    again = await locker.acquire("other", lambda: None, 1)  # usable again: connects anew
    await again.release()


# --- the module ------------------------------------------------------------------------------------------------------


def test_repr_hides_passwords() -> None:
    assert repr(RedisLocker("redis://127.0.0.1:6379/0")) == "RedisLocker('redis://127.0.0.1:6379/0')"
    assert repr(RedisLocker("redis://:secret@db.example:6380/2", prefix="x")) == (
        "RedisLocker('redis://db.example:6380/2', prefix='x')"
    )
    assert "secret" not in repr(RedisLocker("rediss://user:secret@h/0?password=secret"))
    assert repr(RedisLocker(aioredis.Redis(host="10.0.0.1", port=7000, db=3, password="secret"))) == (
        "RedisLocker('redis://10.0.0.1:7000/3')"
    )
    with pytest.raises(ValueError):
        RedisLocker("http://127.0.0.1/")


def test_redis_is_imported_only_when_used() -> None:
    code = (
        "import sys, pytusd, pytusd.lockers\n"
        "assert 'redis' not in sys.modules\n"
        "from pytusd.lockers import RedisLocker\n"
        "assert 'redis' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- stress: mutual exclusion across processes ----------------------------------------------------------------------

STRESS = """
import asyncio, os, random, sys, time
import redis.asyncio as aioredis
from pytusd import errors
from pytusd.lockers import RedisLocker

async def main(url, prefix, processes, seconds, ids):
    locker = RedisLocker(url, prefix=prefix, ttl=2.0)
    log = aioredis.Redis.from_url(url)
    pid = os.getpid()
    numbers = iter(range(1 << 30))
    await log.incr(f"{prefix}:ready")  # start together, once all have started Python
    while int(await log.get(f"{prefix}:ready")) < processes:
        await asyncio.sleep(0.01)
    stop_at = time.monotonic() + seconds
    timeouts = 0

    async def worker():
        nonlocal timeouts
        while time.monotonic() < stop_at:
            upload_id = random.choice(ids)
            asked = asyncio.Event()
            try:
                lock = await locker.acquire(upload_id, asked.set, 2)
            except errors.TusError:
                timeouts += 1
                continue
            n = next(numbers)
            try:
                await log.rpush(f"{prefix}:log:{upload_id}", f"enter {pid} {n}")
                for _ in range(random.randint(1, 8)):  # a few ms of work, cut short when asked to let go
                    if asked.is_set():
                        break
                    await asyncio.sleep(0.001)
                await log.rpush(f"{prefix}:log:{upload_id}", f"exit {pid} {n}")
            finally:
                await lock.release()
            await asyncio.sleep(random.random() * 0.004)

    await asyncio.gather(worker(), worker())
    await log.rpush(f"{prefix}:done", f"{pid} {timeouts}")
    await locker.close()
    await log.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]))
"""


def test_processes_never_hold_the_same_lock_at_once(redis_url: str, prefix: str) -> None:
    """4 processes with 2 workers each fight over 3 uploads for 3 s (from when all have started), handing over on request; each records in Redis
    when it enters and leaves. Per upload, the records must strictly alternate enter/exit of the same holder."""
    ids = ["s1", "s2", "s3"]
    procs = [subprocess.Popen([sys.executable, "-c", STRESS, redis_url, prefix, "4", "3", *ids]) for _ in range(4)]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        done = client.lrange(f"{prefix}:done", 0, -1)
        assert len(done) == 4
        entries_by_pid: collections.Counter[str] = collections.Counter()
        for upload_id in ids:
            records = client.lrange(f"{prefix}:log:{upload_id}", 0, -1)
            assert records and len(records) % 2 == 0
            for enter, leave in zip(records[::2], records[1::2], strict=True):
                kind, pid, n = enter.split()
                assert kind == "enter", f"records of {upload_id} out of order at {enter!r}: two holders at once"
                assert leave == f"exit {pid} {n}", f"two holders of {upload_id} at once: {enter!r} then {leave!r}"
                entries_by_pid[pid] += 1
            assert client.exists(f"{prefix}:lock:{upload_id}") == 0, "every lock released in the end"
        assert set(entries_by_pid) == {str(proc.pid) for proc in procs}
        assert min(entries_by_pid.values()) >= 5, entries_by_pid
        client.delete(*(f"{prefix}:log:{i}" for i in ids), f"{prefix}:done", f"{prefix}:ready")
    finally:
        client.close()
