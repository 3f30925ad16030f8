"""FileStore: uploads on a local (or network) filesystem, laid out like tusd's filestore.

``<dir>/<id>`` holds the bytes and ``<dir>/<id>.info`` the upload info as tusd's FileInfo JSON, so a folder written
by tusd is served by pytusd and the other way round. The offset is the data file's size, never a stored number, so
it cannot claim bytes that are not on disk.

Where the blocking calls run is the ``file_io`` mode (:mod:`pytusd.fileio`, the command's ``--file-io``):

- ``threads``: every one of them - each write of a body, the ``.info`` reads and writes, creating, downloading,
  terminating, declaring a length, listing for the expiration cleaner - runs in a pool thread, so a slow filesystem
  (NFS, EFS, SMB, FUSE) delays only the request that waits for it. Chunk bodies are written behind (a batch is
  written in a thread while the next chunks arrive); the splice(2) path runs socket -> pipe -> file in a pump
  thread while the loop only watches the socket (pytusd.fastbody).
- ``inline``: the calls are made on the event loop. It is the cheaper way on a local disk: threads measured a fifth
  to a third more CPU per small upload and per byte of the chunk path there, and the same for large spliced
  uploads (README, Reliability; bench/NOTES.md, "File I/O in threads").
- ``auto`` (the default): threads where ``statfs(2)`` says network or user-space filesystem, else inline.

``fsync`` flushes run in a thread in every mode, with the calls around them, since they wait for the device.
:meth:`FileStore.concat` copies in every mode in threads of its own (``fileio.copy_pool``, two), so concatenations
never hold up the loop nor take the threads the requests' small calls need.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .. import errors, fileio
from ..info import UploadInfo, is_valid_upload_id, new_upload_id
from .base import Capabilities, Upload

T = TypeVar("T")

# Names of temporary files (an .info being replaced): unique by O_EXCL, this generator only spreads them.
_names = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_names.seed)

DEFAULT_DIR_PERMS = 0o775
DEFAULT_FILE_PERMS = 0o664
READ_BLOCK = 256 * 1024
CONCAT_SUFFIX = ".concat"  # a final's bytes while they are being concatenated, renamed over its data when complete
COPY_STEP = 64 * 1024 * 1024  # bytes per copy_file_range call
# Threaded mode: body bytes received at most while the previous batch is still being written (per request).
WRITE_BEHIND = 1 << 20
READY_CACHE = 1.0  # seconds a readiness probe's answer is kept
LIST_BATCH = 1000  # upload IDs listed per thread call (the expiration cleaner)


def _storage_error(exc: OSError) -> errors.TusError:
    return errors.storage_error(exc)  # 507 when full, 500 ERR_STORAGE_READ_ONLY when read-only, else 500


async def _flush(call: Callable[[int], None], fd: int) -> None:
    """``os.fsync``/``os.fdatasync`` in a thread: a device flush takes milliseconds, during which the event loop goes
    on serving other requests (inline, --fsync cut concurrent small uploads to a third). ``fd`` must stay open until
    the flush is done, so a cancelled request still waits for it before going on."""
    await fileio.in_thread(call, fd)


def _fsync_dir_now(path: str) -> None:
    """Flush a folder's entries (files created, renamed or removed in it) to the device."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def _write_behind(fd: int, offset: int, chunks: AsyncIterable[bytes], done: Callable[[int], None]) -> None:
    """The chunk path in threaded mode: each batch of chunks is written in a thread while the next ones arrive
    (at most WRITE_BEHIND bytes wait meanwhile); ``done(n)`` as bytes reach the file. Everything received is written
    before it returns, also when the body ends early; a write error raises once what came before it is counted."""
    position = offset
    batch: list[bytes] = []
    size = 0
    job: fileio.Job[tuple[int, OSError | None]] | None = None

    async def collect() -> None:
        nonlocal job, position
        assert job is not None
        try:
            n, exc = await job.outcome()
        finally:
            job = None
        position += n
        done(n)
        if exc is not None:
            raise exc

    try:
        async for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if job is not None and (size >= WRITE_BEHIND or job.finished):
                await collect()
            if job is None:
                job = fileio.start(fileio.pwrite_all, fd, batch, position)
                batch, size = [], 0
        if job is not None:
            await collect()
        if batch:
            job = fileio.start(fileio.pwrite_all, fd, batch, position)
            await collect()
    finally:
        if job is not None:  # cancelled or failed meanwhile: the batch in the thread still counts
            with contextlib.suppress(BaseException):
                await collect()


def _copy_range(source: int, target: int, size: int, position: int) -> None:
    """Copy ``size`` bytes from the start of ``source`` to ``position`` in ``target``: inside the kernel where it
    can (``copy_file_range``), else through a buffer. A source shorter than ``size`` is an error."""
    copied = 0
    kernel = hasattr(os, "copy_file_range")
    while copied < size:
        step = min(COPY_STEP, size - copied)
        n = 0
        if kernel:
            try:
                n = os.copy_file_range(source, target, step, copied, position + copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                kernel = False
        if not kernel:
            block = os.pread(source, min(step, READ_BLOCK * 4), copied)
            view = memoryview(block)
            while view:
                written = os.pwrite(target, view, position + copied + n)
                n += written
                view = view[written:]
        if n == 0:
            raise OSError(errno.EIO, f"a partial upload holds fewer than its {size} bytes")
        copied += n


class FileUpload:
    """One upload in a :class:`FileStore`."""

    __slots__ = ("_store", "_info", "data_path", "info_path")

    def __init__(self, store: FileStore, info: UploadInfo, data_path: str, info_path: str) -> None:
        self._store = store
        self._info = info
        self.data_path = data_path
        self.info_path = info_path

    @property
    def pending_path(self) -> str:
        """Marks a chunk being written all-or-nothing; holds the offset the chunk started at."""
        return self.info_path[: -len(".info")] + ".pending"

    async def info(self) -> UploadInfo:
        return self._info

    async def write(self, offset: int, chunks: AsyncIterable[bytes]) -> int:
        store = self._store
        fd = await store._call(self._open_at, offset)
        try:
            return await self._write(fd, offset, chunks)
        finally:
            await store._call(os.close, fd)  # over NFS, close() is where written data is sent

    def _open_at(self, offset: int) -> int:
        """Open the data file for writing at ``offset``; bytes past it were never committed (a verified chunk
        interrupted by a crash) and are cut off here, under the upload's lock, before anything new is written."""
        try:
            fd = os.open(self.data_path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errors.ERR_UPLOAD_NOT_FOUND() from None
        except OSError as exc:  # a read-only or non-writable storage
            raise _storage_error(exc) from exc
        try:
            if os.fstat(fd).st_size > offset:
                os.ftruncate(fd, offset)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pending_path)
        except OSError as exc:
            os.close(fd)
            raise _storage_error(exc) from exc
        return fd

    async def _write(self, fd: int, offset: int, chunks: AsyncIterable[bytes]) -> int:
        store = self._store
        written = 0

        def done(n: int) -> None:
            nonlocal written
            written += n

        try:
            # pytusd's own server moves a request body straight from the socket into the file (splice(2)).
            pool = fileio.pool() if store.threaded else None
            splice = getattr(chunks, "splice_into", None)
            if splice is None or not await splice(fd, offset, done, pool):
                if pool is not None:
                    await _write_behind(fd, offset, chunks, done)
                else:
                    async for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            n = os.pwrite(fd, view, offset + written)
                            written += n
                            view = view[n:]
            if store.fsync:
                await _flush(os.fdatasync, fd)
        except OSError as exc:
            raise _storage_error(exc) from exc
        finally:
            self._info = self._info.replace(offset=offset + written)
        return written

    async def reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        call = self._store._call
        fd = await call(os.open, self.data_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            position = start
            while end is None or position < end:
                want = READ_BLOCK if end is None else min(READ_BLOCK, end - position)
                block = await call(os.pread, fd, want, position)
                if not block:
                    break
                position += len(block)
                yield block
        finally:
            await call(os.close, fd)

    async def finish(self) -> None:
        return None

    async def modified_time(self) -> float:
        return (await self._store._call(os.stat, self.data_path)).st_mtime

    # -- capabilities (FileStore.capabilities) --------------------------------------------------------------------

    async def terminate(self) -> None:
        await self._store._terminate(self)

    async def expire(self) -> None:
        await self._store._expire(self)

    async def declare_length(self, length: int) -> None:
        await self._store._declare_length(self, length)

    async def annotate(self, changes: Mapping[str, str | None]) -> None:
        info = self._info.with_storage(changes)
        try:
            await self._store._write_info(self.info_path, info)
        except OSError as exc:
            raise _storage_error(exc) from exc
        self._info = info

    async def write_verified(
        self, offset: int, chunks: AsyncIterable[bytes], verify: Callable[[int], Awaitable[bool]]
    ) -> int:
        return await self._store._write_verified(self, offset, chunks, verify)

    async def concat(self, partials: Sequence[Upload]) -> None:
        files = [p for p in partials if isinstance(p, FileUpload)]
        if len(files) != len(partials):
            raise errors.ERR_INTERNAL_SERVER_ERROR("a file store concatenates only its own uploads")
        await self._store._concat(self, files)


class FileStore:
    """Stores uploads as files in ``path``.

    Capabilities: termination, creation-defer-length, concatenation, verified (checksummed) writes, expiration. ``dir_perms``/``file_perms`` are the modes of
    what it creates (tusd's defaults 0775/0664); with ``fsync`` every acknowledged byte and every ``.info`` is
    flushed to the device before the response. ``file_io`` is where the blocking calls run: ``"threads"``,
    ``"inline"`` (on the event loop) or ``"auto"`` (threads on a network or user-space filesystem; see
    :mod:`pytusd.fileio`); :attr:`threaded` and :attr:`file_io_reason` say what was chosen.
    """

    capabilities = Capabilities(
        terminate=True, declare_length=True, concat=True, write_verified=True, expire=True, modified_time=True,
        annotate=True,
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dir_perms: int = DEFAULT_DIR_PERMS,
        file_perms: int = DEFAULT_FILE_PERMS,
        fsync: bool = False,
        file_io: str = "auto",
    ) -> None:
        self.root = os.path.abspath(os.fspath(path))
        self.dir_perms = dir_perms
        self.file_perms = file_perms
        self.fsync = fsync
        self.file_io = file_io
        self.threaded, self.file_io_reason = fileio.resolve(file_io, self.root)
        self._ready_at: float | None = None  # when the last readiness probe succeeded

    def __repr__(self) -> str:
        return f"FileStore({self.root!r})"

    def _call(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """``fn(*args)`` as the file I/O mode says: in a thread, or right here on the loop."""
        return fileio.call(self.threaded, fn, *args)

    def _call_syncing(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """As :meth:`_call`, but always in a thread with ``fsync`` (``fn`` flushes to the device)."""
        return fileio.call(self.threaded or self.fsync, fn, *args)

    def ensure_directory(self) -> None:
        os.makedirs(self.root, mode=self.dir_perms, exist_ok=True)

    def prepare(self) -> None:
        """When an app is made with this store (:class:`pytusd.stores.base.Prepared`): the directory exists."""
        self.ensure_directory()

    async def ready(self) -> None:
        """Readiness (``/ready``): an upload can be created and written here, as a probe file shows.

        The probe (``.pytusd-ready-<random>.tmp``: a ``.tmp`` name is never an upload ID, and listing uploads only
        looks at ``.info`` files) is created, written, read back and removed, as the file I/O mode says (in a thread,
        or inline). A success is kept for READY_CACHE seconds (then only the directory is looked at), so frequent
        ``/ready`` polls stay cheap; a failure is not kept, so readiness comes back at the next poll."""
        cached = self._ready_at
        probe = cached is None or time.monotonic() - cached >= READY_CACHE
        self._ready_at = None
        await self._call(self._check_ready, probe)
        self._ready_at = time.monotonic() if probe else cached

    def _check_ready(self, probe: bool = True) -> None:
        if not os.path.isdir(self.root):
            raise OSError(f"upload directory {self.root} does not exist or is not a directory")
        if not probe:
            return
        path = os.path.join(self.root, f".pytusd-ready-{secrets.token_hex(6)}.tmp")
        data = b"pytusd readiness probe\n"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create a file in {self.root}: {exc.strerror or exc}") from None
        try:
            try:
                written = os.write(fd, data)
                back = os.pread(fd, len(data), 0)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write a file in {self.root}: {exc.strerror or exc}") from None
            if written != len(data) or back != data:
                raise OSError(errno.EIO, f"a file written in {self.root} does not read back")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)

    # -- paths ----------------------------------------------------------------------------------------------------

    def _path_for(self, upload_id: str) -> str:
        """``<root>/<id>``; IDs that could leave the root are not found (a second guard behind the app's check:
        a valid ID has no empty, ``.`` or ``..`` segment and no leading ``/``, so the joined path is already
        normal and inside the root)."""
        if not is_valid_upload_id(upload_id):
            raise errors.ERR_UPLOAD_NOT_FOUND()
        return self.root + os.sep + upload_id

    def _data_path(self, info: UploadInfo, default: str) -> str:
        chosen = info.storage.get("Path") if info.storage else None
        if not chosen:
            return default
        return chosen if os.path.isabs(chosen) else os.path.join(self.root, chosen)

    # -- DataStore ------------------------------------------------------------------------------------------------

    async def create(self, info: UploadInfo) -> FileUpload:
        upload_id = info.id or new_upload_id()
        base = self._path_for(upload_id)
        info_path = base + ".info"
        data_path = self._data_path(info, base)
        info = info.replace(
            id=upload_id,
            offset=0,
            storage={"Type": "filestore", "Path": data_path, "InfoPath": info_path},
        )
        try:
            await self._call_syncing(self._create_files, data_path, info_path, info)
        except FileExistsError:
            raise errors.ERR_INTERNAL_SERVER_ERROR(f"an upload with ID {upload_id!r} exists already") from None
        except OSError as exc:
            raise _storage_error(exc) from exc
        return FileUpload(self, info, data_path, info_path)

    def _create_files(self, data_path: str, info_path: str, info: UploadInfo) -> None:
        for path in {os.path.dirname(data_path), os.path.dirname(info_path)}:
            if path != self.root:  # an ID with segments, or a data path a hook chose
                os.makedirs(path, mode=self.dir_perms, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(data_path, flags, self.file_perms)
        except FileNotFoundError:  # the root itself was removed while serving: made again, as at start
            self.ensure_directory()
            fd = os.open(data_path, flags, self.file_perms)
        os.close(fd)
        self._write_info_now(info_path, info)  # with fsync: also syncs the info's folder
        if self.fsync and os.path.dirname(data_path) != os.path.dirname(info_path):
            _fsync_dir_now(os.path.dirname(data_path))

    async def get(self, upload_id: str) -> FileUpload:
        base = self._path_for(upload_id)
        return await self._call(self._load, upload_id, base)

    def _load(self, upload_id: str, base: str) -> FileUpload:
        info_path = base + ".info"
        try:
            raw = fileio.read_file(info_path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if os.path.exists(base + ".expired"):
                raise errors.ERR_UPLOAD_EXPIRED() from None
            raise errors.ERR_UPLOAD_NOT_FOUND() from None
        except OSError as exc:
            raise _storage_error(exc) from exc
        info = UploadInfo.from_json(raw)
        data_path = self._data_path(info, base)
        try:
            size = os.stat(data_path).st_size
        except (FileNotFoundError, NotADirectoryError):
            raise errors.ERR_UPLOAD_NOT_FOUND() from None
        size = min(size, self._pending_offset(base + ".pending", size))
        # The ID is the one the URL named: an .info copied from elsewhere cannot redirect requests to another ID.
        info = info.replace(id=upload_id, offset=size)
        return FileUpload(self, info, data_path, info_path)

    @staticmethod
    def _pending_offset(path: str, default: int) -> int:
        """Where an unverified chunk started, if one is being written (or was, when a process died)."""
        try:
            return int(fileio.read_file(path).strip() or default)
        except (FileNotFoundError, ValueError):
            return default

    # -- capabilities ---------------------------------------------------------------------------------------------

    async def _terminate(self, upload: FileUpload) -> None:
        paths = [upload.data_path, upload.info_path]
        if upload._info.is_final:  # what a concatenation that died left
            paths.append(upload.data_path + CONCAT_SUFFIX)
        await self._call(self._remove, *paths)

    @staticmethod
    def _remove(*paths: str) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _storage_error(exc) from exc

    async def _expire(self, upload: FileUpload) -> None:
        """Remove the upload and leave ``<id>.expired`` (a few bytes) so that it answers 410 from now on."""
        await self._call(self._expire_now, upload.info_path[: -len(".info")] + ".expired", upload)

    def _expire_now(self, tombstone: str, upload: FileUpload) -> None:
        with open(tombstone, "w") as f:
            f.write(str(int(time.time())))
        self._remove(upload.data_path, upload.info_path)

    async def upload_ids(self) -> AsyncIterator[str]:
        ids = self._walk_ids()
        if not self.threaded:
            for upload_id in ids:
                yield upload_id
            return
        while batch := await self._call(lambda: list(itertools.islice(ids, LIST_BATCH))):
            for upload_id in batch:
                yield upload_id

    def _walk_ids(self) -> Iterator[str]:
        for folder, _dirs, files in os.walk(self.root):
            relative = os.path.relpath(folder, self.root)
            for name in files:
                if name.endswith(".info"):
                    upload_id = name[: -len(".info")]
                    yield upload_id if relative == "." else f"{relative}/{upload_id}"

    async def forget_expired(self, older_than: float) -> int:
        return await self._call(self._forget_expired_now, older_than)

    def _forget_expired_now(self, older_than: float) -> int:
        forgotten = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(".expired"):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(path).st_mtime < older_than:
                            os.unlink(path)
                            forgotten += 1
        return forgotten

    async def _declare_length(self, upload: FileUpload, length: int) -> None:
        info = (await upload.info()).replace(size=length, size_is_deferred=False)
        await self._write_info(upload.info_path, info)
        upload._info = info

    async def _write_verified(
        self, upload: FileUpload, offset: int, chunks: AsyncIterable[bytes], verify: Callable[[int], Awaitable[bool]]
    ) -> int:
        fd = await self._call(upload._open_at, offset)
        try:
            await self._call_syncing(self._mark_pending, upload.pending_path, offset)
            accepted = False
            try:
                written = await upload._write(fd, offset, chunks)
                accepted = await verify(written)
            finally:
                if not accepted:
                    await self._call(os.ftruncate, fd, offset)
                    upload._info = upload._info.replace(offset=offset)
                await self._call_syncing(self._unmark_pending, upload.pending_path)
            return written if accepted else 0
        except OSError as exc:
            raise _storage_error(exc) from exc
        finally:
            await self._call(os.close, fd)

    def _mark_pending(self, path: str, offset: int) -> None:
        marker = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self.file_perms)
        try:
            os.write(marker, str(offset).encode())
            if self.fsync:
                os.fsync(marker)
        finally:
            os.close(marker)

    def _unmark_pending(self, path: str) -> None:
        os.unlink(path)
        if self.fsync:  # else a power loss could bring the marker back and hide an acknowledged chunk
            _fsync_dir_now(os.path.dirname(path))

    async def _concat(self, final: FileUpload, partials: Sequence[FileUpload]) -> None:
        """All-or-nothing and repeatable: the partials are copied (by the kernel, ``copy_file_range``) into
        ``<data>.concat`` in a thread, which then replaces the final's data file. A final is empty until its bytes
        are all there; an attempt that failed or died is simply done again from the start (the temporary file is
        truncated), never on top of what it wrote."""
        sources = [(partial.data_path, (await partial.info()).offset) for partial in partials]
        job = fileio.start(self._concat_files, final.data_path, sources, threads=fileio.copy_pool())
        size = await job.outcome()  # a cancelled request still waits: the files must not change after the lock goes
        final._info = final._info.replace(offset=size)

    def _concat_files(self, data_path: str, sources: list[tuple[str, int]]) -> int:
        temporary = data_path + CONCAT_SUFFIX
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self.file_perms)
            try:
                position = 0
                for path, size in sources:
                    try:
                        source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:  # the partial was deleted meanwhile
                        raise errors.ERR_UPLOAD_NOT_FOUND("a partial upload went away during concatenation") from None
                    try:
                        _copy_range(source, fd, size, position)
                    finally:
                        os.close(source)
                    position += size
                if self.fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, data_path)
            if self.fsync:
                dir_fd = os.open(os.path.dirname(data_path), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except (OSError, errors.TusError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(exc, errors.TusError):
                raise
            raise _storage_error(exc) from exc
        return position

    # -- internals ------------------------------------------------------------------------------------------------

    async def _write_info(self, info_path: str, info: UploadInfo) -> None:
        """Write the .info atomically: a temporary file in the same folder, then rename over the old one."""
        await self._call_syncing(self._write_info_now, info_path, info)

    def _write_info_now(self, info_path: str, info: UploadInfo) -> None:
        data = info.to_json()
        while True:  # O_EXCL keeps names apart, so the name needs no strong randomness (and no system call)
            tmp = f"{info_path}.{_names.getrandbits(32):08x}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_perms)
                break
            except FileExistsError:
                continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, info_path)
        if self.fsync:
            _fsync_dir_now(os.path.dirname(info_path))

    @staticmethod
    async def _fsync_dir(path: str) -> None:
        """Flush a folder's entries (files created, renamed or removed in it) to the device, in a thread."""
        await fileio.in_thread(_fsync_dir_now, path)
