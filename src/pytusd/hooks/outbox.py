"""Durable notification hooks (``--hooks-durable``): an outbox of post-create, post-finish and post-terminate events.

Before the request that caused it answers, an event is recorded where every process of the deployment sees it (see
:class:`FolderOutbox` and :class:`RedisOutbox`), one per bound backend, with a stable ``EventID``. A deliverer in
every process (:meth:`Outbox.run`) takes the oldest pending event of each upload under a lease, calls the backend
and removes the event only once the backend answered without error (at least once, in order per upload: a later
event of an upload waits while an earlier one is pending). A failed attempt is retried with doubling pauses; past
``max_attempts`` or ``max_age`` the event goes to the dead letters (logged, counted), from which
``pytusd hooks retry`` brings it back. A process that dies mid-delivery loses nothing: its lease ends (the
kernel's file lock at once, a Redis lease within its TTL) and another process delivers the event again, with the
same ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .. import fileio
from ..observe import logs
from ..observe.metrics import Metrics

log = logging.getLogger("pytusd.hooks")

DURABLE_HOOKS = frozenset({"post-create", "post-finish", "post-terminate"})
EVENT_ID = re.compile(r"[0-9a-f]{32}")
MAX_EVENT_BYTES = 1 << 20  # a hook request is bounded by the request's head and the metadata limits; this by far
MAX_ERROR_CHARS = 500


def new_event_id() -> str:
    return secrets.token_hex(16)


@dataclasses.dataclass
class Event:
    """One pending delivery: a hook request for one backend, and its delivery state."""

    id: str
    hook_type: str
    upload_id: str
    backend: str  # repr() of the backend it is for
    request: dict[str, Any]  # the hook JSON, EventID included
    created: float
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""
    dead: bool = False
    key: str = ""  # where the store keeps it (FolderOutbox: the file's name)

    def to_json(self) -> str:
        # The fields as they are (dataclasses.asdict would deep-copy the hook request first, for nothing).
        return json.dumps({f: getattr(self, f) for f in _EVENT_FIELDS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an outbox event is a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def summary(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "hook": self.hook_type, "upload_id": self.upload_id, "backend": self.backend,
                "state": "dead" if self.dead else "pending", "age": round(now - self.created, 3),
                "attempts": self.attempts, "next_attempt_in": round(max(0.0, self.next_at - now), 3),
                "last_error": self.last_error}


_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(Event))


class Lease(Protocol):
    async def renew(self) -> bool: ...

    async def release(self) -> None: ...


class OutboxStore(Protocol):
    """Where events wait: shared by every process of a deployment."""

    async def add(self, event: Event) -> None: ...

    async def events(self, dead: bool, limit: int) -> list[Event]:
        """Pending (or dead) events, oldest first, at most ``limit``."""
        ...

    async def claim(self, event: Event, ttl: float) -> tuple[Lease, Event] | None:
        """The upload's delivery lease and the event as stored now; None when another process holds it or the event
        is gone."""
        ...

    async def save(self, event: Event) -> None: ...

    async def ack(self, event: Event) -> None: ...

    async def bury(self, event: Event) -> None: ...

    async def revive(self, event: Event) -> None: ...

    async def drop(self, event: Event) -> None: ...

    async def aclose(self) -> None: ...


# -- a folder ---------------------------------------------------------------------------------------------------------


class _Moves:
    """What both stores do the same way: a dead letter and a revived one are moves between their two states, and a
    dropped event is removed as a delivered one is."""

    async def ack(self, event: Event) -> None:
        raise NotImplementedError

    async def _move(self, event: Event, dead: bool) -> None:
        raise NotImplementedError

    async def bury(self, event: Event) -> None:
        await self._move(event, True)

    async def revive(self, event: Event) -> None:
        await self._move(event, False)

    async def drop(self, event: Event) -> None:
        await self.ack(event)


class _FileLease:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def renew(self) -> bool:
        return True  # the kernel's lock lasts as long as the holder's process

    async def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1


class FolderOutbox(_Moves):
    """Events as files in a folder: ``pending/<time>.<id>.json`` (written once, to a temporary name, flushed and
    renamed), ``<same>.state`` beside it for the delivery state, ``dead/`` for dead letters. The lease is an
    exclusive ``flock`` of the event file: the processes of one host (or one folder) never both hold it, and the
    kernel releases it the moment its holder dies."""

    def __init__(self, directory: str | os.PathLike[str], *, file_io: str = "auto") -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        # Where the calls that do not flush run, as the file store's (pytusd.fileio): on the loop for a local disk,
        # in threads on a network filesystem. Recording an event flushes it to the device: always in a thread.
        self.threaded, self.file_io_reason = fileio.resolve(file_io, self.directory)
        self.pending_dir = os.path.join(self.directory, "pending")
        self.dead_dir = os.path.join(self.directory, "dead")
        self._last_ns = 0

    def __repr__(self) -> str:
        return f"FolderOutbox({self.directory!r})"

    def prepare(self) -> None:
        os.makedirs(self.pending_dir, exist_ok=True)
        os.makedirs(self.dead_dir, exist_ok=True)

    def _path(self, event: Event) -> str:
        return os.path.join(self.dead_dir if event.dead else self.pending_dir, os.path.basename(event.key))

    @staticmethod
    def _write(path: str, text: str, sync: bool) -> None:
        temporary = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
        if sync:
            fd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def add(self, event: Event) -> None:
        created = max(time.time_ns(), self._last_ns + 1)  # strictly increasing names within a process
        self._last_ns = created
        event.created = created / 1e9
        event.key = f"{created:020d}.{event.id}.json"

        def write() -> None:
            self.prepare()
            self._write(os.path.join(self.pending_dir, event.key), event.to_json(), True)

        await fileio.call(True, write)

    def _read(self, folder: str, name: str, dead: bool) -> Event | None:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                event = Event.from_json(f.read(MAX_EVENT_BYTES + 1))
            created_ns = int(name.split(".", 1)[0])
        except (OSError, ValueError, TypeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("outbox file %s cannot be read: %s", path, exc)
            return None
        event.created = created_ns / 1e9
        event.key = name
        with contextlib.suppress(OSError, ValueError, TypeError):
            with open(path[: -len(".json")] + ".state", "rb") as f:
                state = json.loads(f.read(64 * 1024))
            event.attempts = int(state["attempts"])
            event.next_at = float(state["next_at"])
            event.last_error = str(state["last_error"])[:MAX_ERROR_CHARS]
        event.dead = dead
        return event

    async def events(self, dead: bool, limit: int) -> list[Event]:
        folder = self.dead_dir if dead else self.pending_dir

        def scan() -> list[Event]:
            try:
                names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
            except FileNotFoundError:
                return []
            found = []
            for name in names[:limit]:
                event = self._read(folder, name, dead)
                if event is not None:
                    found.append(event)
            return found

        return await fileio.call(self.threaded, scan)

    async def claim(self, event: Event, ttl: float) -> tuple[Lease, Event] | None:
        path = self._path(event)

        def take() -> tuple[Lease, Event] | None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)  # delivered (and removed) while we opened it
                fresh = self._read(os.path.dirname(path), os.path.basename(path), event.dead)
                if fresh is None:
                    raise FileNotFoundError(path)
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                return None
            return _FileLease(fd), fresh

        return await fileio.call(self.threaded, take)

    async def save(self, event: Event) -> None:
        state = {"attempts": event.attempts, "next_at": event.next_at, "last_error": event.last_error}
        path = self._path(event)[: -len(".json")] + ".state"
        await fileio.call(self.threaded, self._write, path, json.dumps(state), False)

    async def ack(self, event: Event) -> None:
        path = self._path(event)

        def remove() -> None:
            for name in (path[: -len(".json")] + ".state", path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

        await fileio.call(self.threaded, remove)

    async def _move(self, event: Event, dead: bool) -> None:
        source = self._path(event)
        target = os.path.join(self.dead_dir if dead else self.pending_dir, os.path.basename(source))

        def move() -> None:
            self.prepare()
            if dead:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(source[: -len(".json")] + ".state", target[: -len(".json")] + ".state")
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(source[: -len(".json")] + ".state")  # a revived event starts afresh
            os.replace(source, target)

        await fileio.call(self.threaded, move)
        event.dead = dead

    async def aclose(self) -> None:
        return None


# -- Redis -----------------------------------------------------------------------------------------------------------

_ADD = """
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[2])
return seq
"""
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class _RedisLease:
    def __init__(self, outbox: RedisOutbox, key: str, token: str, ttl: float) -> None:
        self.outbox, self.key, self.token, self.ttl = outbox, key, token, ttl

    async def renew(self) -> bool:
        client = self.outbox.client()
        return bool(await client.eval(_RENEW, 1, self.key, self.token, int(self.ttl * 1000)))

    async def release(self) -> None:
        with contextlib.suppress(Exception):  # not reached: the lease expires by itself
            await self.outbox.client().eval(_RELEASE, 1, self.key, self.token)


class RedisOutbox(_Moves):
    """Events in Redis (for deployments that share a Redis locker): ``<prefix>event:<id>`` holds the event as JSON,
    the sorted sets ``<prefix>pending`` and ``<prefix>dead`` order the IDs by a sequence number every process draws
    from ``<prefix>seq``, and ``<prefix>lease:<upload>`` (``SET NX PX``, renewed every third of its TTL, deleted
    only by its holder's token) is an upload's delivery lease. As durable as the Redis server is made (AOF)."""

    def __init__(self, url: str, prefix: str = "pytusd:outbox:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: Any = None

    def __repr__(self) -> str:
        return f"RedisOutbox({self.url!r})"

    def client(self) -> Any:
        if self._client is None:
            from .. import extras

            try:
                import redis.asyncio as aioredis
            except ImportError as exc:  # pragma: no cover - depends on the installation
                raise ImportError(extras.missing("the Redis outbox needs redis", "redis")) from exc
            self._client = aioredis.Redis.from_url(self.url)
        return self._client

    def _key(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}"

    async def add(self, event: Event) -> None:
        event.created = time.time()
        await self.client().eval(
            _ADD, 3, self.prefix + "seq", self._key(event.id), self.prefix + "pending", event.to_json(), event.id
        )

    async def events(self, dead: bool, limit: int) -> list[Event]:
        client = self.client()
        ids = await client.zrange(self.prefix + ("dead" if dead else "pending"), 0, max(0, limit - 1))
        if not ids:
            return []
        found = []
        for raw in await client.mget([self._key(i.decode()) for i in ids]):
            if raw is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                found.append(Event.from_json(raw))
        return found

    async def claim(self, event: Event, ttl: float) -> tuple[Lease, Event] | None:
        client = self.client()
        key = f"{self.prefix}lease:{event.upload_id}"
        token = secrets.token_hex(16)
        if not await client.set(key, token, nx=True, px=int(ttl * 1000)):
            return None
        lease = _RedisLease(self, key, token, ttl)
        raw = await client.get(self._key(event.id))
        in_queue = await client.zscore(self.prefix + ("dead" if event.dead else "pending"), event.id)
        if raw is None or in_queue is None:
            await lease.release()
            return None
        return lease, Event.from_json(raw)

    async def save(self, event: Event) -> None:
        await self.client().set(self._key(event.id), event.to_json(), xx=True)

    async def ack(self, event: Event) -> None:
        async with self.client().pipeline(transaction=True) as pipe:
            pipe.zrem(self.prefix + "pending", event.id)
            pipe.zrem(self.prefix + "dead", event.id)
            pipe.delete(self._key(event.id))
            await pipe.execute()

    async def _move(self, event: Event, dead: bool) -> None:
        source, target = ("pending", "dead") if dead else ("dead", "pending")
        client = self.client()
        score = await client.zscore(self.prefix + source, event.id)
        event.dead = dead
        if not dead:
            event.attempts, event.next_at, event.last_error = 0, 0.0, ""
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.prefix + source, event.id)
            pipe.zadd(self.prefix + target, {event.id: score if score is not None else 0})
            pipe.set(self._key(event.id), event.to_json())
            await pipe.execute()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# -- delivery ---------------------------------------------------------------------------------------------------------


class Outbox:
    """Records events and delivers them: ``deliver(event)`` (set by :class:`pytusd.hooks.Hooks`) calls the event's
    backend and raises when it did not acknowledge the event."""

    def __init__(
        self,
        store: OutboxStore,
        *,
        max_attempts: int = 0,
        max_age: float = 86400.0,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        concurrency: int = 8,
        batch: int = 1000,
    ) -> None:
        if backoff <= 0 or max_backoff < backoff or lease <= 0 or poll_interval <= 0 or concurrency < 1 or batch < 1:
            raise ValueError("outbox pauses, lease and poll interval must be positive, max_backoff >= backoff")
        if max_attempts < 0 or max_age < 0:
            raise ValueError("max_attempts and max_age must be >= 0 (0: no limit)")
        self.store = store
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.lease = lease
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.batch = batch
        self.deliver: Callable[[Event], Awaitable[None]] | None = None
        self.metrics: Metrics | None = None
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"Outbox({self.store!r})"

    async def record(self, hook_type: str, upload_id: str, request: dict[str, Any], backends: list[str]) -> None:
        """Store the event, one per backend, each with its own ``EventID`` in its copy of ``request``."""
        for backend in backends:
            event_id = new_event_id()
            event = Event(event_id, hook_type, upload_id, backend, {**request, "EventID": event_id}, time.time())
            if len(event.to_json()) > MAX_EVENT_BYTES:
                raise ValueError(f"a {hook_type} event of {upload_id} is larger than {MAX_EVENT_BYTES} bytes")
            await self.store.add(event)
        self._wake.set()

    def _dead_reason(self, event: Event, now: float) -> str:
        if self.max_attempts and event.attempts >= self.max_attempts:
            return f"{event.attempts} attempts"
        if self.max_age and now - event.created > self.max_age:
            return f"older than {self.max_age:g} s"
        return ""

    async def _bury(self, event: Event, reason: str) -> None:
        await self.store.bury(event)
        if self.metrics is not None:
            self.metrics.hook_dead_letter(event.hook_type)
        log.error("%s event %s of upload %s for %s is a dead letter (%s; last error: %s); `pytusd hooks retry %s` "
                  "delivers it again", event.hook_type, event.id, event.upload_id, event.backend, reason,
                  event.last_error or "none", event.id,
                  extra=logs.fields(event="HookDeadLetter", hook=event.hook_type, upload_id=event.upload_id,
                                    event_id=event.id))

    async def _deliver_one(self, event: Event) -> bool:
        """One attempt under the upload's lease; True when the event was acknowledged (and removed)."""
        claimed = await self.store.claim(event, self.lease)
        if claimed is None:
            return False
        lease, event = claimed
        renewing = asyncio.get_running_loop().create_task(self._renew(lease))
        try:
            now = time.time()
            if event.next_at > now:
                return False  # another process tried it since we listed it
            reason = self._dead_reason(event, now)
            if reason:
                await self._bury(event, reason)
                return False
            event.attempts += 1
            try:
                if self.deliver is None:
                    raise RuntimeError("no hooks to deliver to")
                await self.deliver(event)
            except Exception as exc:
                cause = exc.__cause__ or exc  # a HookFailed says which hook; its cause says why
                event.last_error = f"{type(cause).__name__}: {cause}"[:MAX_ERROR_CHARS]
                pause = min(self.max_backoff, self.backoff * 2 ** min(event.attempts - 1, 30))
                event.next_at = time.time() + pause * random.uniform(0.8, 1.0)
                if self.metrics is not None:
                    self.metrics.hook_delivery(event.hook_type, False)
                log.warning("%s event %s of upload %s: attempt %d failed (%s); next in %.1f s", event.hook_type,
                            event.id, event.upload_id, event.attempts, event.last_error, pause,
                            extra=logs.fields(event="HookDeliveryFailed", hook=event.hook_type,
                                              upload_id=event.upload_id, event_id=event.id))
                await self.store.save(event)
                reason = self._dead_reason(event, time.time())
                if reason:
                    await self._bury(event, reason)
                return False
            await self.store.ack(event)
            if self.metrics is not None:
                self.metrics.hook_delivery(event.hook_type, True)
            return True
        finally:
            renewing.cancel()
            await lease.release()

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(Exception):
                await lease.renew()

    async def deliver_once(self) -> int:
        """One pass: the oldest pending event of each upload, if due, delivered concurrently; the number acknowledged.
        Updates the backlog gauges (counted up to ``batch`` events)."""
        events = await self.store.events(False, self.batch)
        now = time.time()
        if self.metrics is not None:
            self.metrics.hook_outbox(len(events), now - events[0].created if events else 0.0)
        heads: dict[str, Event] = {}
        for event in events:
            heads.setdefault(event.upload_id, event)
        due = [event for event in heads.values() if event.next_at <= now]
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(event: Event) -> bool:
            async with semaphore:
                try:
                    return await self._deliver_one(event)
                except Exception as exc:  # the outbox itself failed (Redis away, disk): the event stays
                    log.warning("outbox %r: %s", self.store, exc)
                    return False

        return sum(await asyncio.gather(*(one(event) for event in due)))

    async def run(self) -> None:
        """Deliver until cancelled: a pass whenever an event is recorded here, after an acknowledgement (the next
        event of an upload), and every ``poll_interval`` (events recorded by other processes, retries)."""
        while True:
            self._wake.clear()
            try:
                delivered = await self.deliver_once()
            except Exception as exc:
                log.warning("outbox %r cannot be read: %s", self.store, exc)
                delivered = 0
            if delivered:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    # -- admin ----------------------------------------------------------------------------------------------------

    async def listing(self) -> list[Event]:
        return await self.store.events(False, self.batch) + await self.store.events(True, self.batch)

    async def find(self, event_id: str) -> Event | None:
        if not EVENT_ID.fullmatch(event_id):
            raise ValueError(f"{event_id[:40]!r} is not an event ID (32 hex digits)")
        return next((event for event in await self.listing() if event.id == event_id), None)

    async def retry(self, event_id: str | None = None) -> int:
        """Dead letters back to pending (one, or all); pending events due now. The number of events touched."""
        touched = 0
        for event in await self.listing():
            if event_id is not None and event.id != event_id:
                continue
            if event.dead:
                await self.store.revive(event)
            else:
                claimed = await self.store.claim(event, self.lease)
                if claimed is None:
                    continue  # being delivered right now
                lease, event = claimed
                try:
                    event.next_at = 0.0
                    await self.store.save(event)
                finally:
                    await lease.release()
            touched += 1
        return touched

    async def drop(self, event_id: str) -> bool:
        """Remove one event, pending (under its lease: not while it is being delivered) or dead."""
        event = await self.find(event_id)
        if event is None:
            return False
        claimed = await self.store.claim(event, self.lease)
        if claimed is None:
            raise RuntimeError(f"event {event_id} is being delivered right now; try again")
        lease, event = claimed
        try:
            await self.store.drop(event)
        finally:
            await lease.release()
        return True
