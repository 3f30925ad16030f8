"""RedisLocker: per-upload locks that every process sharing one Redis respects, on any number of hosts.

A lock is the key ``<prefix>:lock:<id>``, created with ``SET NX PX`` and holding a random token of its holder; only a
script that finds the holder's own token extends (``PEXPIRE``) or deletes it. The holder extends the key every
``ttl/3`` seconds, so a crashed process's locks expire by themselves within ``ttl`` seconds. A holder that finds its
key gone or somebody else's, or that cannot reach Redis until its time is nearly up, calls its ``on_release_request``
(the request stops writing, as when asked to let go) and stops extending.

Handover (tusd v2): a waiter that finds the key taken learns the holder's token in the same round trip and publishes
``<id> <token>`` on the channel ``<prefix>:release``. Each RedisLocker keeps one subscription, started on its first
``acquire``, and passes such a request to the lock it holds under that ID and token; the token makes sure a request
never reaches a later holder it was not meant for (for instance the waiter itself). A holder that lets go deletes its
key and publishes ``<id>`` on ``<prefix>:unlocked``, which wakes the waiters at once. Waiters also retry with a backoff
from 2 ms up to ``acquirer_poll_interval``, and repeat their request every ``release_request_interval`` seconds (at
once when the holder changes). ``PUBLISH <prefix>:release <id>`` (no token) from anywhere asks whoever holds ``<id>``.

The client is the ``redis`` extra (:func:`pytusd.extras.install_hint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import urllib.parse
from collections.abc import Coroutine
from typing import Any

from .. import errors, extras
from ..info import is_valid_upload_id
from .base import ReleaseRequest

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import SSLConnection, parse_url
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        extras.missing("RedisLocker needs the redis package (redis-py)", "redis")
    ) from exc

log = logging.getLogger("pytusd")

# Take the lock unless somebody holds it; answers nil when we got it, else the holder's token.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])
"""

# Extend the lock if it is still ours: 1, else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Delete the lock if it is still ours and tell the waiters: 1, else 0.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# What talking to Redis may raise besides a RedisError (asyncio's TimeoutError is an OSError, too).
_FAILURES = (RedisError, OSError)

_FIRST_POLL = 0.002
_EARLY_KEEP = 1.0
_EARLY_MAX = 1000


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _describe(client: aioredis.Redis) -> str:
    """A URL for a client made elsewhere, without its password."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return type(client).__name__
    kwargs: dict[str, Any] = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    scheme = "rediss" if issubclass(pool.connection_class, SSLConnection) else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


class _Held:
    """A lock this locker holds: its token, whom to ask to let go, and the task that keeps the key alive."""

    __slots__ = ("asked", "on_release_request", "renewal", "token", "upload_id")

    def __init__(self, upload_id: str, token: str, on_release_request: ReleaseRequest) -> None:
        self.upload_id = upload_id
        self.token = token
        self.on_release_request = on_release_request
        self.asked = False
        self.renewal: asyncio.Task[None] | None = None

    def ask(self) -> None:
        if not self.asked:
            self.asked = True
            try:
                self.on_release_request()
            except Exception:
                log.exception("asking the holder of the lock on %s to let go failed", self.upload_id)


class RedisLock:
    __slots__ = ("_held", "_locker", "_released")

    def __init__(self, locker: RedisLocker, held: _Held) -> None:
        self._locker = locker
        self._held = held
        self._released = False

    @property
    def token(self) -> str:
        """The random value of this lock's key while this lock holds it."""
        return self._held.token

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._locker._release(self._held)


class RedisLocker:
    """Locks in Redis: right for any number of server processes on any number of hosts sharing one Redis.

    ``url_or_client`` is a Redis URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://``, ``unix://``)
    or a ``redis.asyncio.Redis`` client, which stays the caller's to close. ``ttl`` is how long a lock outlives a
    holder that stops renewing it (a crashed process); ``prefix`` starts every key and channel name.
    """

    def __init__(
        self,
        url_or_client: str | aioredis.Redis,
        *,
        prefix: str = "pytusd",
        ttl: float = 5.0,
        acquirer_poll_interval: float = 0.1,
        release_request_interval: float = 0.5,
    ) -> None:
        if not ttl > 0.01:
            raise ValueError("ttl must be more than 10 ms")
        if not acquirer_poll_interval > 0 or not release_request_interval > 0:
            raise ValueError("poll and release request intervals must be positive")
        if isinstance(url_or_client, str):
            parse_url(url_or_client)  # a bad URL fails here, not at the first upload
            self.url: str = url_or_client
            self._given: aioredis.Redis | None = None
        else:
            self.url = _describe(url_or_client)
            self._given = url_or_client
        self.prefix = prefix
        self.ttl = ttl
        self.acquirer_poll_interval = acquirer_poll_interval
        self.release_request_interval = release_request_interval
        self.release_channel = f"{prefix}:release"
        self.unlocked_channel = f"{prefix}:unlocked"
        self._ttl_ms = max(1, round(ttl * 1000))
        # Everything below belongs to one event loop; _connect starts it afresh in another.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aioredis.Redis | None = None
        self._held: dict[str, _Held] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._early: dict[str, float] = {}  # token -> when a release request for no lock of ours named it
        self._background: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    def __repr__(self) -> str:
        extra = "" if self.prefix == "pytusd" else f", prefix={self.prefix!r}"
        return f"RedisLocker({_without_password(self.url)!r}{extra})"

    async def ready(self) -> None:
        """Readiness (``/ready``): Redis answers PING (within ``ttl``)."""
        client = self._connect()
        async with asyncio.timeout(self.ttl):
            await client.ping()

    def _unavailable(self, exc: BaseException) -> errors.TusError:
        """503 ERR_LOCKER_UNAVAILABLE (with Retry-After) for a Redis that cannot be reached, logged as one line."""
        return errors.unavailable(errors.ERR_LOCKER_UNAVAILABLE, f"the Redis locker at {_without_password(self.url)}", exc)

    def key(self, upload_id: str) -> str:
        """The Redis key of an upload's lock."""
        return f"{self.prefix}:lock:{upload_id}"

    # --- the Locker protocol -----------------------------------------------------------------------------------

    async def acquire(self, upload_id: str, on_release_request: ReleaseRequest, timeout: float) -> RedisLock:
        if not is_valid_upload_id(upload_id):
            raise errors.ERR_UPLOAD_NOT_FOUND()
        client = self._connect()
        subscribed = self._listen()
        woken = asyncio.Event()
        self._waiters.setdefault(upload_id, set()).add(woken)
        try:
            # Everything, Redis round trips included, within the timeout: a hung connection is a timeout too.
            async with asyncio.timeout(timeout):
                return await self._wait_for(client, subscribed, woken, upload_id, on_release_request)
        except TimeoutError:
            raise errors.ERR_LOCK_TIMEOUT() from None
        except _FAILURES as exc:
            raise self._unavailable(exc) from None
        finally:
            waiters = self._waiters.get(upload_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[upload_id]

    async def _wait_for(
        self,
        client: aioredis.Redis,
        subscribed: asyncio.Event,
        woken: asyncio.Event,
        upload_id: str,
        on_release_request: ReleaseRequest,
    ) -> RedisLock:
        if not subscribed.is_set():
            # Hear release requests before holding anything. Should the subscription be slow, go on after a while:
            # waiters repeat their requests, and a Redis that cannot be reached fails the SET below.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2 * self.release_request_interval):
                    await subscribed.wait()
        loop = asyncio.get_running_loop()
        key = self.key(upload_id)
        token = secrets.token_hex(16)
        delay = _FIRST_POLL
        asked: str | None = None
        asked_at = 0.0
        while True:
            woken.clear()
            sent = loop.time()
            holder = await self._try_set(client, upload_id, key, token)
            if holder is None:
                return self._hold(upload_id, token, on_release_request, sent + self.ttl)
            now = loop.time()
            if holder != asked or now - asked_at >= self.release_request_interval:
                await self._request_release(client, upload_id, holder)
                asked, asked_at = holder, now
            # Until the holder's "unlocked" message, or the next try.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await woken.wait()
            delay = min(delay * 2, self.acquirer_poll_interval)

    async def try_acquire(self, upload_id: str) -> RedisLock | None:
        if not is_valid_upload_id(upload_id):
            return None
        client = self._connect()
        token = secrets.token_hex(16)
        sent = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.ttl):  # a hung connection raises TimeoutError rather than hang housekeeping
                holder = await self._try_set(client, upload_id, self.key(upload_id), token)
        except TimeoutError:
            raise
        except _FAILURES as exc:
            raise self._unavailable(exc) from None
        if holder is not None:
            return None
        return self._hold(upload_id, token, lambda: None, sent + self.ttl)

    async def close(self) -> None:
        """Stop listening and renewing, and close the client if this locker made it.

        Locks still held are not deleted (they expire within ``ttl``); their holders are asked to let go, as they are
        no longer kept alive. The locker connects again when used again.
        """
        if self._loop is not asyncio.get_running_loop():
            self._forget_loop()
            return
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])
        for held in list(self._held.values()):
            self._stop_renewing(held)
            held.ask()
        self._held.clear()
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.ttl)
        client = self._client
        self._forget_loop()
        if client is not None and client is not self._given:
            await client.aclose()

    # --- connection and subscription ---------------------------------------------------------------------------

    def _forget_loop(self) -> None:
        self._loop = None
        self._client = None
        self._held = {}
        self._waiters = {}
        self._early = {}
        self._background = set()
        self._listener = None
        self._subscribed = None

    def _connect(self) -> aioredis.Redis:
        """The client for the running event loop (a locker made before the loop, or used in another, starts anew)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None:
            self._forget_loop()
            self._loop = loop
            self._client = self._given if self._given is not None else aioredis.Redis.from_url(self.url)
        return self._client

    def _listen(self) -> asyncio.Event:
        """Start the one subscription of this locker if it is not running; the event is set while it listens."""
        if self._subscribed is None:
            self._subscribed = asyncio.Event()
        if self._listener is None or self._listener.done():
            assert self._client is not None
            self._listener = asyncio.get_running_loop().create_task(
                self._subscription(self._client, self._subscribed), name=f"{self!r} subscription"
            )
        return self._subscribed

    async def _subscription(self, client: aioredis.Redis, subscribed: asyncio.Event) -> None:
        delay = 0.05
        failing = False  # warned about the current outage already: its retries are DEBUG
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.release_channel, self.unlocked_channel)
                await self._dispatch(pubsub, subscribed)
            except Exception as exc:  # noqa: BLE001 - whatever broke, listen again
                was_listening = subscribed.is_set()
                delay = 0.05 if was_listening else min(delay * 2, 2.0)
                subscribed.clear()
                level = logging.DEBUG if failing and not was_listening else logging.WARNING
                failing = True
                log.log(level, "%r: listening for release requests failed (%s); retrying in %.2fs", self, _why(exc),
                        delay)
            finally:
                with contextlib.suppress(Exception):  # the connection may be broken already
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            await asyncio.sleep(delay)

    async def _dispatch(self, pubsub: aioredis.client.PubSub, subscribed: asyncio.Event) -> None:
        waiting_for = {self.release_channel, self.unlocked_channel}
        idle = max(self.ttl, 1.0)
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=idle)
            if message is None:
                # Silence: make sure the connection is alive, as a dead one would never say so.
                if pinged:
                    raise RedisConnectionError("no answer to PING on the subscription")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message["type"]
            if kind == "subscribe":
                waiting_for.discard(_text(message["channel"]))
                if not waiting_for:
                    subscribed.set()
            elif kind == "message":
                channel, data = _text(message["channel"]), _text(message["data"])
                if channel == self.release_channel:
                    self._on_release_request(data)
                elif channel == self.unlocked_channel:
                    self._wake(data)

    def _on_release_request(self, data: str) -> None:
        upload_id, _, token = data.partition(" ")
        held = self._held.get(upload_id)
        if held is not None and (not token or token == held.token):
            held.ask()
        elif token:
            # Perhaps meant for a lock of ours whose SET answer we have not read yet (both arrived at once): keep the
            # token a moment for _hold. Tokens are random, so only the lock it names can ever match it.
            now = asyncio.get_running_loop().time()
            early = self._early
            early.pop(token, None)
            early[token] = now
            while len(early) > _EARLY_MAX or early[next(iter(early))] < now - _EARLY_KEEP:
                del early[next(iter(early))]

    def _wake(self, upload_id: str) -> None:
        for woken in self._waiters.get(upload_id, ()):
            woken.set()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- taking, keeping and giving back ----------------------------------------------------------------------

    async def _try_set(self, client: aioredis.Redis, upload_id: str, key: str, token: str) -> str | None:
        """None when the lock is now ours, else the current holder's token."""
        try:
            holder = await client.eval(_ACQUIRE, 1, key, token, str(self._ttl_ms))
        except asyncio.CancelledError:
            # The SET may have happened before we stopped listening for the answer: undo it, if so.
            self._in_background(self._delete(client, upload_id, token))
            raise
        return None if holder is None else _text(holder)

    async def _request_release(self, client: aioredis.Redis, upload_id: str, holder: str) -> None:
        held = self._held.get(upload_id)
        if held is not None and held.token == holder:
            held.ask()  # the holder is here: no need to go through Redis
        else:
            await client.publish(self.release_channel, f"{upload_id} {holder}")

    def _hold(self, upload_id: str, token: str, on_release_request: ReleaseRequest, expires: float) -> RedisLock:
        held = _Held(upload_id, token, on_release_request)
        self._held[upload_id] = held
        if self._early.pop(token, None) is not None:
            asyncio.get_running_loop().call_soon(held.ask)  # asked before we knew we held it
        held.renewal = asyncio.get_running_loop().create_task(
            self._keep_alive(held, expires), name=f"{self!r} renewal of {upload_id}"
        )
        return RedisLock(self, held)

    async def _keep_alive(self, held: _Held, expires: float) -> None:
        """Extend the key every ttl/3 seconds; when it is lost, or Redis fails until its time is nearly up, ask the
        holder to stop (early enough to stop before another process can take the lock)."""
        assert self._client is not None
        client = self._client
        loop = asyncio.get_running_loop()
        interval, retry, margin = self.ttl / 3, self.ttl / 12, self.ttl / 6
        key = self.key(held.upload_id)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            give_up = expires - margin
            sent = loop.time()
            if sent >= give_up:
                log.warning("lock on %s: Redis was unreachable for too long; asking its holder to stop", held.upload_id)
                break
            try:
                async with asyncio.timeout(give_up - sent):
                    renewed = await client.eval(_RENEW, 1, key, held.token, str(self._ttl_ms))
            except _FAILURES as exc:
                # Warn once per outage; the retries come every ttl/12 seconds.
                level = logging.WARNING if delay == interval else logging.DEBUG
                log.log(level, "lock on %s: renewing failed (%s); retrying", held.upload_id, _why(exc))
                delay = max(0.0, min(retry, give_up - loop.time()))
                continue
            if not renewed:
                log.warning("lock on %s was lost (its key expired or was changed); asking its holder to stop",
                            held.upload_id)
                break
            expires = sent + self.ttl
            delay = interval
        held.renewal = None
        if self._held.get(held.upload_id) is held:
            del self._held[held.upload_id]
        held.ask()

    def _stop_renewing(self, held: _Held) -> None:
        if held.renewal is not None:
            held.renewal.cancel()
            held.renewal = None

    async def _release(self, held: _Held) -> None:
        self._stop_renewing(held)
        if self._held.get(held.upload_id) is held:
            del self._held[held.upload_id]
        client = self._client
        if client is None or self._loop is not asyncio.get_running_loop():
            return  # closed meanwhile: the key expires by itself
        # Shielded: a request cancelled while it lets go still frees the upload at once.
        await asyncio.shield(self._in_background(self._delete(client, held.upload_id, held.token)))

    async def _delete(self, client: aioredis.Redis, upload_id: str, token: str) -> None:
        try:
            async with asyncio.timeout(self.ttl):  # no use trying longer: by then the key has expired
                await client.eval(_RELEASE, 1, self.key(upload_id), token, self.unlocked_channel, upload_id)
        except _FAILURES as exc:
            log.warning("lock on %s: releasing failed (%s); it expires within %gs", upload_id, _why(exc), self.ttl)
            return
        self._wake(upload_id)
