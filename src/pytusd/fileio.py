"""Where the file store and the file locker make their blocking calls: inline on the event loop, or in threads.

One event loop serves every connection of a process, so a file operation that waits - a write to NFS or EFS, an
``.info`` read from an SMB share that is reconnecting, a local write held by the kernel's dirty-page throttling -
waits for all of them: every other upload, ``HEAD`` and ``/health`` too. tusd gives each request its own goroutine.
pytusd's answer is the ``file_io`` mode of :class:`pytusd.FileStore` and :class:`pytusd.FileLocker` (the command's
``--file-io``):

- ``threads``: every blocking call runs in a thread of :func:`pool`, the loop goes on serving the others;
- ``inline``: every call is made on the loop (the cheapest, for a local disk that is never slow);
- ``auto`` (the default): ``threads`` when ``statfs(2)`` says the directory is on a network or user-space
  filesystem (:data:`SLOW_FILESYSTEMS`: NFS, SMB/CIFS, FUSE, Ceph, 9p, Lustre, ...) or cannot tell, else ``inline``.

``fsync`` flushes run in a thread in every mode: they wait for the device by design.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

FILE_IO_MODES = ("auto", "threads", "inline")

# Threads of the file I/O pool (one pool per process): as many blocking calls can wait at once before the next
# one queues. Threads are started only when all the running ones are busy (a burst of quick calls shares a few).
IO_THREADS = 64

# statfs(2) f_type of the filesystems whose calls may wait on a network, a remote server or a user-space daemon
# (linux/magic.h and the filesystems' own sources). Everything else counts as a local disk.
SLOW_FILESYSTEMS = {
    0x6969: "nfs",  # NFS 2, 3 and 4 (Amazon EFS, Azure Files NFS, Google Filestore, ...)
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",  # SMB 2/3 (Azure Files, Windows shares)
    0x65735546: "fuse",  # FUSE: sshfs, s3fs, gcsfuse, rclone, GlusterFS, virtiofs, ...
    0x00C36400: "ceph",  # CephFS
    0x01021997: "9p",  # 9p (WSL2's drvfs, QEMU shares)
    0x0BD00BD0: "lustre",
    0x5346414F: "afs",
    0x6B414653: "afs",  # kAFS
    0x47504653: "gpfs",  # IBM Spectrum Scale
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x73757245: "coda",
    0x564C: "ncp",
    0x786F4256: "vboxsf",  # VirtualBox shared folders
}


def filesystem_type(path: str) -> int | None:
    """``statfs(2)``'s f_type of the filesystem holding ``path`` (or its nearest existing parent), or None where
    it cannot be told (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return None
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        statfs = ctypes.CDLL(None, use_errno=True).statfs  # the process's own libc
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first
        if statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    # f_type is a C long (__fsword_t); the magic numbers fit 32 bits, so read it unsigned at that width.
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def resolve(mode: str, path: str) -> tuple[bool, str]:
    """(whether to use threads, why) for ``mode`` (one of :data:`FILE_IO_MODES`) and the directory ``path``."""
    if mode not in FILE_IO_MODES:
        raise ValueError(f"file I/O mode must be one of {', '.join(FILE_IO_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "threads", f"{mode}, as asked"
    kind = filesystem_type(path)
    if kind is None:
        return True, "threads: the filesystem's type cannot be told here"
    name = SLOW_FILESYSTEMS.get(kind)
    if name is not None:
        return True, f"threads: {name} is a network or user-space filesystem"
    return False, f"inline: a local filesystem (statfs type {kind:#x})"


class Pool:
    """Threads for blocking file calls, started as needed: a call finding no idle thread starts one, up to
    ``limit``; beyond that, calls queue until a thread is free. Lighter than ``loop.run_in_executor`` (measured: a
    call from the loop and back costs a fraction as much under load): the calls go through one queue and their
    results come back with ``call_soon_threadsafe``."""

    def __init__(self, limit: int = IO_THREADS, name: str = "pytusd-file-io") -> None:
        self.limit = limit
        self.name = name
        self.threads = 0
        self._free = 0  # idle threads less the calls queued for them (< 0: calls are waiting)
        self._queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], object]) -> None:
        """Run ``work()`` in a thread (its exceptions are its own business)."""
        with self._lock:
            self._queue.put(work)
            self._free -= 1
            start = self._free < 0 and self.threads < self.limit
            if start:
                self.threads += 1
                self._free += 1
        if start:
            threading.Thread(target=self._serve, name=f"{self.name}-{self.threads}", daemon=True).start()

    def _serve(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            work = get()
            try:
                work()
            except BaseException:  # pragma: no cover - work() reports its own outcome
                pass
            del work
            with lock:
                self._free += 1


class Job(Generic[T]):
    """One call in the pool; its outcome comes back to the loop that started it (:func:`start`)."""

    __slots__ = ("fn", "args", "loop", "future", "finished", "result", "error", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __call__(self) -> None:  # in a pool thread
        outcome: tuple[Any, BaseException | None]
        try:
            outcome = (self.fn(*self.args), None)
        except BaseException as exc:
            outcome = (None, exc)
        self.fn = self.args = None  # type: ignore[assignment]  # let go of them: a Job is called once
        try:
            self.loop.call_soon_threadsafe(self._complete, *outcome)
        except RuntimeError:  # pragma: no cover - the loop is closed: nobody waits any more
            pass

    def _complete(self, result: Any, error: BaseException | None) -> None:  # on the loop
        self.finished = True
        self.result, self.error = result, error
        future = self.future
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def outcome(self, discard: Callable[[T], None] | None = None) -> T:
        """The call's result. A cancelled caller still waits for the call to end before the cancellation goes on
        (the call may use descriptors the caller closes next); ``discard(result)`` then cleans up what the call
        returned and nobody will take (a locked descriptor)."""
        try:
            return await self.future
        except asyncio.CancelledError:
            while not self.finished:
                self._waiter = self.loop.create_future()
                try:
                    await self._waiter
                except asyncio.CancelledError:
                    pass
            if discard is not None and self.error is None:
                discard(self.result)
            raise


_pool: Pool | None = None
_pool_pid = 0
# Bulk copies (concatenation) have threads of their own: however many an attacker asks for, they queue behind each
# other and never take the threads that the requests' small calls (and fsync flushes) need.
COPY_THREADS = 2
_copy_pool: Pool | None = None
_copy_pool_pid = 0


def copy_pool() -> Pool:
    """This process's threads for bulk copies, made on first use."""
    global _copy_pool, _copy_pool_pid
    pid = os.getpid()
    if _copy_pool is None or _copy_pool_pid != pid:
        _copy_pool = Pool(COPY_THREADS, "pytusd-copy")
        _copy_pool_pid = pid
    return _copy_pool


def pool() -> Pool:
    """This process's pool of file I/O threads, made on first use (so never before a --workers fork)."""
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        _pool = Pool()
        _pool_pid = pid
    return _pool


def start(fn: Callable[..., T], *args: Any, threads: Pool | None = None) -> Job[T]:
    """``fn(*args)`` started in a thread of ``threads`` (default: :func:`pool`); await :meth:`Job.outcome` (or
    watch :attr:`Job.future`)."""
    job = Job(asyncio.get_running_loop(), fn, args)
    (threads or pool()).submit(job)
    return job


async def settle(future: asyncio.Future[T]) -> T:
    """``await future``, but a cancelled caller still waits for it to be done before the cancellation goes on (it
    stands for work in a thread that may use descriptors the caller closes next)."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                pass
        raise


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a file I/O thread (cancellation: see :meth:`Job.outcome`)."""
    return await start(fn, *args).outcome()


async def call(threaded: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: in a file I/O thread when ``threaded``, else right here on the loop."""
    if threaded:
        return await start(fn, *args).outcome()
    return fn(*args)


def read_file(path: str) -> bytes:
    """The whole of a small file (an ``.info``, a marker) in as few system calls as the kernel allows: open, one
    read per 64 KiB, the read that finds the end, close (Python's buffered ``open`` adds five more: a terminal
    check, two seeks and two stats)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b""
        parts = [chunk]
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def pwrite_all(fd: int, chunks: list[bytes], offset: int) -> tuple[int, OSError | None]:
    """Write ``chunks`` one after the other into ``fd`` from ``offset``: (bytes written, the error that stopped
    it or None). The count is exact even when it fails halfway, so the caller knows what reached the file."""
    written = 0
    try:
        if len(chunks) == 1:
            view = memoryview(chunks[0])
            while view:
                n = os.pwrite(fd, view, offset + written)
                written += n
                view = view[n:]
            return written, None
        total = sum(len(c) for c in chunks)
        buffers: list[Any] = list(chunks)
        while written < total:
            n = os.pwritev(fd, buffers[:1024], offset + written)  # IOV_MAX
            written += n
            while buffers and n >= len(buffers[0]):
                n -= len(buffers[0])
                buffers.pop(0)
            if n:
                buffers[0] = memoryview(buffers[0])[n:]
    except OSError as exc:
        return written, exc
    return written, None
