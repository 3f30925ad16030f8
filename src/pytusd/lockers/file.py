"""FileLocker: per-upload locks that several processes on one host (or over a shared filesystem) respect.

The lock is an exclusive ``flock`` on ``<dir>/<id>.lock``; the kernel drops it when its process dies, so a crashed
server never leaves an upload locked. A waiter asks the holder to let go by creating ``<dir>/<id>.stop``, which the
holder looks for every ``holder_poll_interval`` seconds (tusd's filelocker protocol, with flock in place of PID
files). The waiter itself retries with a backoff of at most ``acquirer_poll_interval``.

Every call that touches the filesystem follows the ``file_io`` mode, as the file store's (:mod:`pytusd.fileio`):
on a network filesystem, taking a lock, asking for one, polling for the request and letting go run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from typing import Any

from .. import errors, fileio
from ..info import is_valid_upload_id
from .base import ReleaseRequest


def _try_flock(path: str) -> int | None:
    """An fd holding the exclusive lock on ``path``, or None while somebody else holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # A releasing holder unlinks the file before unlocking; if we locked such an orphan, start over.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _take(lock_path: str, stop_path: str) -> int | None:
    """One attempt: the lock's fd (and the release request of earlier waiters removed), or None with a release
    request left for the holder."""
    fd = _try_flock(lock_path)
    if fd is None:
        with contextlib.suppress(OSError):
            os.close(os.open(stop_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o664))
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stop_path)
    return fd


def _let_go(fd: int, lock_path: str) -> None:
    try:
        os.unlink(lock_path)
    except FileNotFoundError:
        pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class FileLock:
    __slots__ = ("_fd", "_lock_path", "_threaded", "_holders", "_upload_id")

    def __init__(self, fd: int, lock_path: str, threaded: bool = False) -> None:
        self._fd = fd
        self._lock_path = lock_path
        self._threaded = threaded
        self._holders: dict[str, Callable[[], None]] | None = None  # the locker's, while this lock is in it
        self._upload_id = ""

    async def release(self) -> None:
        if self._fd < 0:
            return
        if self._holders is not None:
            self._holders.pop(self._upload_id, None)
            self._holders = None
        fd, self._fd = self._fd, -1
        await fileio.call(self._threaded, _let_go, fd, self._lock_path)


def _asked(paths: list[tuple[str, str]]) -> list[str]:
    """The upload IDs among ``(upload_id, stop_path)`` whose release request file exists."""
    return [upload_id for upload_id, stop_path in paths if os.path.exists(stop_path)]


class FileLocker:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        holder_poll_interval: float = 0.5,
        acquirer_poll_interval: float = 0.1,
        file_io: str = "auto",
    ) -> None:
        self.root = os.path.abspath(os.fspath(path))
        self.holder_poll_interval = holder_poll_interval
        self.acquirer_poll_interval = acquirer_poll_interval
        self.file_io = file_io
        self.threaded, self.file_io_reason = fileio.resolve(file_io, self.root)
        # Locks this process holds, by upload ID, with what to call when asked to let go: a request here that wants
        # one asks its holder at once; other processes leave a .stop file, which one timer of this locker looks for
        # every holder_poll_interval seconds while any lock is held (no timer per lock: most are held for
        # milliseconds).
        self._holders: dict[str, Callable[[], None]] = {}
        self._poll: asyncio.TimerHandle | None = None
        self._poll_loop: asyncio.AbstractEventLoop | None = None
        self._polling = False  # a threaded look is under way

    def __repr__(self) -> str:
        return f"FileLocker({self.root!r})"

    async def ready(self) -> None:
        """Readiness (``/ready``): the lock directory exists and lock files can be created in it."""
        await fileio.call(self.threaded, self._check_ready)

    def _check_ready(self) -> None:
        if not os.path.isdir(self.root) or not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(f"lock directory {self.root} is missing or not writable")

    async def _attempt(self, fn: Callable[..., int | None], *args: Any) -> int | None:
        """``fn(*args)``, which returns a locked fd or None, as the mode says; a lock that a cancelled caller
        can no longer take is let go of at once."""
        if not self.threaded:
            return fn(*args)
        def discard(fd: int | None) -> None:
            if fd is not None:
                fileio.pool().submit(lambda: _let_go(fd, args[0]))

        return await fileio.start(fn, *args).outcome(discard)

    async def acquire(self, upload_id: str, on_release_request: ReleaseRequest, timeout: float) -> FileLock:
        if not is_valid_upload_id(upload_id):
            raise errors.ERR_UPLOAD_NOT_FOUND()
        base = os.path.join(self.root, upload_id)
        lock_path, stop_path = base + ".lock", base + ".stop"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.002
        while True:
            try:
                fd = await self._attempt(_take, lock_path, stop_path)
            except (FileNotFoundError, NotADirectoryError):
                raise errors.ERR_UPLOAD_NOT_FOUND() from None
            except OSError as exc:  # a read-only, full or non-writable folder: say so rather than crash
                raise errors.storage_error(exc) from exc
            if fd is not None:
                break
            # Busy: a release request was left for the holder (again on every round, as a new holder removes it).
            holder = self._holders.pop(upload_id, None)
            if holder is not None:  # held in this process: asked directly, once
                holder()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.ERR_LOCK_TIMEOUT()
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.acquirer_poll_interval)
        lock = FileLock(fd, lock_path, self.threaded)
        self._holders[upload_id] = on_release_request
        lock._holders, lock._upload_id = self._holders, upload_id
        if self._poll is None or self._poll_loop is not loop:
            self._schedule_poll(loop)
        return lock

    def _schedule_poll(self, loop: asyncio.AbstractEventLoop) -> None:
        self._poll_loop = loop
        self._poll = loop.call_later(self.holder_poll_interval, self._look)

    def _look(self) -> None:
        """The timer: ask the holders whose upload has a release request to let go; again later while any is held."""
        self._poll = None
        loop = self._poll_loop
        if not self._holders or loop is None:
            return
        paths = [(upload_id, os.path.join(self.root, upload_id) + ".stop") for upload_id in self._holders]
        if not self.threaded:
            self._ask(_asked(paths))
            self._schedule_poll(loop)
            return
        if self._polling:  # the last look still waits for the filesystem
            self._schedule_poll(loop)
            return
        self._polling = True
        job = fileio.start(_asked, paths)

        def seen(future: asyncio.Future[list[str]]) -> None:
            self._polling = False
            if not future.cancelled() and future.exception() is None:
                self._ask(future.result())
            if self._holders and self._poll is None and not loop.is_closed():
                self._schedule_poll(loop)

        job.future.add_done_callback(seen)

    def _ask(self, upload_ids: list[str]) -> None:
        for upload_id in upload_ids:
            holder = self._holders.pop(upload_id, None)
            if holder is not None:  # asked once; the lock stays held until its request lets go
                holder()

    async def try_acquire(self, upload_id: str) -> FileLock | None:
        if not is_valid_upload_id(upload_id):
            return None
        lock_path = os.path.join(self.root, upload_id) + ".lock"
        try:
            fd = await self._attempt(_try_flock, lock_path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if fd is None else FileLock(fd, lock_path, self.threaded)
