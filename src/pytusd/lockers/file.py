"""FileLocker: per-upload locks that several processes on one host (or over a shared filesystem) respect.

The lock is an exclusive ``flock`` on ``<dir>/<id>.lock``; the kernel drops it when its process dies, so a crashed
server never leaves an upload locked. A waiter asks the holder to let go by creating ``<dir>/<id>.stop``, which the
holder looks for every ``holder_poll_interval`` seconds (tusd's filelocker protocol, with flock in place of PID
files). The waiter itself retries with a backoff of at most ``acquirer_poll_interval``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os

from .. import errors
from ..protocol import is_valid_upload_id
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


class FileLock:
    __slots__ = ("_fd", "_lock_path", "_poll")

    def __init__(self, fd: int, lock_path: str, poll: asyncio.TimerHandle | None) -> None:
        self._fd = fd
        self._lock_path = lock_path
        self._poll = poll

    async def release(self) -> None:
        if self._fd < 0:
            return
        if self._poll is not None:
            self._poll.cancel()
        try:
            os.unlink(self._lock_path)
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


class FileLocker:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        holder_poll_interval: float = 0.5,
        acquirer_poll_interval: float = 0.1,
    ) -> None:
        self.root = os.path.abspath(os.fspath(path))
        self.holder_poll_interval = holder_poll_interval
        self.acquirer_poll_interval = acquirer_poll_interval

    def __repr__(self) -> str:
        return f"FileLocker({self.root!r})"

    async def ready(self) -> None:
        """Readiness (``/ready``): the lock directory exists and lock files can be created in it."""
        if not os.path.isdir(self.root) or not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(f"lock directory {self.root} is missing or not writable")

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
                fd = _try_flock(lock_path)
            except (FileNotFoundError, NotADirectoryError):
                raise errors.ERR_UPLOAD_NOT_FOUND() from None
            except OSError as exc:  # a read-only, full or non-writable folder: say so rather than crash
                raise errors.storage_error(exc) from exc
            if fd is not None:
                break
            # Busy: ask the holder to let go (again on every round, as a new holder removes the request).
            try:
                os.close(os.open(stop_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o664))
            except OSError:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.ERR_LOCK_TIMEOUT()
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.acquirer_poll_interval)
        try:
            os.unlink(stop_path)
        except FileNotFoundError:
            pass
        lock = FileLock(fd, lock_path, None)
        interval = self.holder_poll_interval

        def poll() -> None:
            if os.path.exists(stop_path):
                lock._poll = None
                on_release_request()
            else:
                lock._poll = loop.call_later(interval, poll)

        lock._poll = loop.call_later(interval, poll)
        return lock

    async def try_acquire(self, upload_id: str) -> FileLock | None:
        if not is_valid_upload_id(upload_id):
            return None
        try:
            fd = _try_flock(os.path.join(self.root, upload_id) + ".lock")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if fd is None else FileLock(fd, os.path.join(self.root, upload_id) + ".lock", None)
