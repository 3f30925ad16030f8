"""GCSStore: uploads as chunk objects in a Google Cloud Storage bucket, composed into one object when finished.

The bucket layout is tusd's gcsstore's. For an upload with ID ``<id>`` (``<key>`` is ``<prefix>/<id>``, or ``<id>``
without a prefix) the bucket holds

* ``<key>.info``: the upload info as tusd's FileInfo JSON;
* ``<key>_0``, ``<key>_1``, ...: the chunk objects, numbered from 0, while the upload goes on;
* ``<key>``: the finished upload, composed from the chunks (which are then deleted), with the upload's metadata as
  the object's custom metadata and its ``filetype`` as Content-Type;
* ``<key>_tmp_<level>_<n>``: intermediate objects while more than 32 objects are composed (GCS composes at most 32
  sources per call), deleted once the final object exists.

Nothing about an upload lives in the process: each request derives the state from the bucket. The offset is the
size of ``<key>`` once it exists, else the sum of the chunk objects numbered 0, 1, 2, ... without a gap. A chunk
after a gap (its predecessor's upload failed) holds bytes that were stored out of order: it is not counted and is
deleted before the next write, so that it can never join the upload later. Every chunk object is created whole or
not at all, and its CRC32C is sent with it, so GCS refuses a chunk whose bytes were damaged on the way. A bucket
written by tusd (one chunk object per PATCH) is resumed as it is.

A PATCH body is cut into chunk objects of ``chunk_size`` bytes while it arrives (the last one of a request is
shorter): each chunk is spooled to an unnamed temporary file and uploaded from a thread (google-cloud-storage is
blocking), at most ``max_buffered_chunks`` spools per request and at most ``concurrent_chunk_uploads`` uploads at
once across the store. The SDK holds at most :data:`UPLOAD_BUFFER` bytes of each upload in memory.

Finishing composes the chunks into ``<key>`` (in groups of 32 through intermediate objects when there are more) and
checks the result's size and CRC32C against the chunks' (CRC32C combined arithmetically, as tusd does). A final
upload of the concatenation extension is composed the same way from its partials' final objects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .. import errors, extras
from ..info import UploadInfo, download_headers, new_upload_id
from .base import Capabilities, Upload
from .objects.engine import PieceUpload, State, StoreNames, read_ahead, storage_error
from .objects.plan import PiecePlan
from .objects.spool import Blocking, concat_by_streaming, contiguous, gather_all

if TYPE_CHECKING:
    from google.cloud.storage import Client

log = logging.getLogger("pytusd.gcs")


KIB = 1 << 10
MIB = 1 << 20
DEFAULT_CHUNK_SIZE = 16 * MIB
READ_BLOCK = 8 * MIB  # one ranged download per block; the next block is fetched while this one is sent
UPLOAD_BUFFER = 8 * MIB  # the SDK sends larger chunks as resumable uploads in pieces of this size (a 256 KiB multiple)
MAX_COMPOSE_SOURCES = 32  # GCS's limit per compose request
MAX_CUSTOM_METADATA = 8 * KIB  # GCS's limit on an object's custom metadata (keys plus values)
OCTET_STREAM = "application/octet-stream"
READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
INSTALL_HINT = extras.missing("the GCS store needs google-cloud-storage", "gcs")

_CHUNK_SUFFIX = re.compile(r"0|[1-9][0-9]*")
_TEMPORARY_SUFFIX = re.compile(r"tmp_[0-9]+_[0-9]+")


def _sdk() -> Any:
    """The google.cloud.storage module, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("google.cloud.storage")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


# --- CRC32C arithmetic ------------------------------------------------------------------------------------------------

_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reversed
_ZERO_BYTES_OPERATORS: list[list[int]] = []  # item k: the GF(2) matrix that appends 2**k zero bytes to a CRC


def _gf2_apply(matrix: list[int], vector: int) -> int:
    result, row = 0, 0
    while vector:
        if vector & 1:
            result ^= matrix[row]
        vector >>= 1
        row += 1
    return result


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_apply(matrix, column) for column in matrix]


def _zero_bytes_operator(k: int) -> list[int]:
    if not _ZERO_BYTES_OPERATORS:
        operator = [_CRC32C_POLY] + [1 << n for n in range(31)]  # one zero bit
        for _ in range(3):  # 2, 4, 8 zero bits
            operator = _gf2_square(operator)
        _ZERO_BYTES_OPERATORS.append(operator)
    while len(_ZERO_BYTES_OPERATORS) <= k:
        _ZERO_BYTES_OPERATORS.append(_gf2_square(_ZERO_BYTES_OPERATORS[-1]))
    return _ZERO_BYTES_OPERATORS[k]


def crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32C of ``A + B`` from ``crc1`` = CRC32C(A), ``crc2`` = CRC32C(B) and ``length2`` = len(B)."""
    k = 0
    while length2:
        if length2 & 1:
            crc1 = _gf2_apply(_zero_bytes_operator(k), crc1)
        length2 >>= 1
        k += 1
    return crc1 ^ crc2


def _crc_from_gcs(value: str | None) -> int | None:
    """GCS gives an object's CRC32C as base64 of 4 big-endian bytes."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def _crc_to_gcs(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


# --- state derived from the bucket --------------------------------------------------------------------------------


@dataclass
class StoredObject:
    """What the store needs to know about one object of an upload (from a listing or an upload's answer)."""

    name: str
    size: int
    generation: int | None = None
    crc32c: str | None = None
    updated: float = 0.0


@dataclass
class Chunk:
    """Chunk object ``number - 1`` (``number`` counts from 1, like every store's pieces in
    :class:`~.objects.spool.PieceWriter`)."""

    number: int
    object: StoredObject

    @property
    def size(self) -> int:
        return self.object.size


@dataclass
class _State(State[Chunk]):
    stale: list[str] = field(default_factory=list)  # chunk objects after a gap
    temporaries: list[str] = field(default_factory=list)  # left by a compose that did not end
    final: StoredObject | None = None  # <key>: the upload is finished

    @property
    def offset(self) -> int:
        return self.final.size if self.final is not None else self.pieces_size


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a google-api-core error (``code``); None for anything else."""
    if isinstance(exc, errors.TusError):
        return None
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _is_missing(exc: BaseException) -> bool:
    return _status(exc) == 404


RETRY_TIMEOUT = 20.0  # seconds a GCS request is retried in all (transient errors, connection failures)


def _storage_error(exc: BaseException) -> errors.TusError:
    return storage_error(exc, "GCS")


def _object_of(blob: Any, fallback_size: int = 0) -> StoredObject:
    updated = getattr(blob, "updated", None)
    generation = getattr(blob, "generation", None)
    size = getattr(blob, "size", None)
    return StoredObject(
        name=str(blob.name),
        size=int(size) if size is not None else fallback_size,
        generation=int(generation) if generation else None,
        crc32c=getattr(blob, "crc32c", None),
        updated=updated.timestamp() if updated is not None else 0.0,
    )


def _combined_crc(sources: Sequence[StoredObject]) -> int | None:
    """The CRC32C of the sources one after the other, or None when one of them has none."""
    combined = 0
    for source in sources:
        crc = _crc_from_gcs(source.crc32c)
        if crc is None:
            return None
        combined = crc32c_combine(combined, crc, source.size)
    return combined


# --- the upload ----------------------------------------------------------------------------------------------------


class GCSUpload(PieceUpload[Chunk, _State]):
    """One upload in a :class:`GCSStore`: pieces are the chunk objects; no tail (GCS has no minimum object size)."""

    names = StoreNames("GCS", "chunk", "", log)
    _store: GCSStore

    def __init__(self, store: GCSStore, upload_id: str, state: _State | None = None) -> None:
        super().__init__(store, upload_id, state, max_buffered=store.max_buffered_chunks)
        self.key = store.object_key(upload_id)

    # -- the engine's backend (PieceUpload) -----------------------------------------------------------------------

    async def _put_piece(self, state: _State, number: int, start: int, spool: IO[bytes] | None, size: int) -> Chunk:
        store = self._store
        obj = await store._send(store._upload_chunk, store.chunk_name(self.key, number), spool, size)
        return Chunk(number, obj)

    async def _put_info(self, info: UploadInfo) -> None:
        await self._store._call(self._store._put_info, self.key, info)

    def _check_length(self, state: _State, length: int) -> None:
        pass  # a composed object has no size limit that the chunks could not reach

    async def _before_pieces(self, state: _State) -> None:
        if state.final is not None:
            raise errors.ERR_UPLOAD_SIZE_EXCEEDED("the upload is finished")
        if state.stale:  # chunks after a gap go first: a new chunk must never make them contiguous
            try:
                await self._store._delete(state.stale)
            except Exception as exc:
                self._state = None
                raise _storage_error(exc) from exc
            state.stale = []

    # -- reading ----------------------------------------------------------------------------------------------------

    async def stored_reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        state = await self.state()
        stop = state.offset if end is None else min(end, state.offset)
        if start >= stop:
            return
        store = self._store
        try:
            if state.final is not None:
                async with contextlib.aclosing(store._download(state.final, start, stop)) as blocks:
                    async for block in blocks:
                        yield block
                return
            position, base = start, 0
            for chunk in state.pieces:
                chunk_end = base + chunk.size
                if position < chunk_end and base < stop:
                    try:
                        part = store._download(chunk.object, position - base, min(stop, chunk_end) - base)
                        async with contextlib.aclosing(part) as blocks:
                            async for block in blocks:
                                position += len(block)
                                yield block
                    except Exception as exc:
                        if not _is_missing(exc):
                            raise
                        break  # the chunks were composed and deleted meanwhile: go on from the final object
                base = chunk_end
                if position >= stop:
                    return
            final = await store._call(store._head, self.key)
            if final is None:
                raise errors.ERR_INTERNAL_SERVER_ERROR("the upload's chunk objects disappeared while they were read")
            async with contextlib.aclosing(store._download(final, position, stop)) as blocks:
                async for block in blocks:
                    yield block
        except Exception as exc:
            raise _storage_error(exc) from exc

    async def finish(self) -> None:
        state = await self.state()
        store = self._store
        if state.final is None:
            info = state.info
            if info.size_is_deferred or state.pieces_size != info.size:
                raise errors.ERR_INTERNAL_SERVER_ERROR(
                    f"cannot finish upload {self.id}: {state.pieces_size} of {info.size} bytes are stored"
                )
            content_type, metadata = store.final_attributes(info)
            try:
                if state.pieces:
                    state.final = await store._compose(
                        [c.object for c in state.pieces], self.key, content_type, metadata
                    )
                else:
                    state.final = await store._call(store._put_empty, self.key, content_type, metadata)
            except Exception as exc:
                self._state = None
                raise _storage_error(exc) from exc
        # Housekeeping: the chunks are in the final object now. Leftovers are removed by a later finish or terminate.
        leftovers = [c.object.name for c in state.pieces] + state.stale + state.temporaries
        if leftovers:
            await store._delete_quietly(leftovers)
        state.pieces, state.stale, state.temporaries = [], [], []

    async def modified_time(self) -> float:
        state = await self.state()
        if state.final is not None:
            return state.final.updated
        if state.pieces:
            return max(c.object.updated for c in state.pieces)
        store = self._store
        try:
            info_object = await store._call(store._head, store.info_name(self.key))
        except Exception as exc:
            raise _storage_error(exc) from exc
        if info_object is None:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        return info_object.updated

    # -- capabilities (GCSStore.capabilities) ---------------------------------------------------------------------

    async def expire(self) -> None:
        await self._store._expire(self)

    async def concat(self, partials: Sequence[Upload]) -> None:
        await self._store._concat(self, partials)


# --- the store -----------------------------------------------------------------------------------------------------


class GCSStore:
    """Stores uploads in a Google Cloud Storage bucket, in tusd's gcsstore layout.

    ``client`` is a ``google.cloud.storage.Client`` (see :func:`make_client` and :meth:`from_options`); the bucket
    must exist. Capabilities: termination, creation-defer-length, concatenation (by compose), checksum
    (:meth:`PieceUpload.write_verified`). An unfinished upload can be read (GET) from its chunk objects.
    """

    # An unfinished upload is read from its chunk objects, in order (readable_while_incomplete, the default).
    capabilities = Capabilities(
        terminate=True, declare_length=True, concat=True, write_verified=True, expire=True, modified_time=True,
        annotate=True,
    )

    def __init__(
        self,
        bucket: str,
        client: Client,
        *,
        object_prefix: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_buffered_chunks: int = 8,
        concurrent_chunk_uploads: int = 8,
        temp_dir: str | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("the chunk size must be at least 1 byte")
        storage = _sdk()
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.bucket = bucket
        self.client = client
        self.object_prefix = object_prefix
        self.chunk_size = chunk_size
        self.max_buffered_chunks = max(1, max_buffered_chunks)
        self.concurrent_chunk_uploads = max(1, concurrent_chunk_uploads)
        self.temp_dir = temp_dir
        self._bucket = client.bucket(bucket)
        self._blob_class = storage.Blob
        # Every request is idempotent here (chunks and composes are written under the upload's lock, by name).
        # Retried for RETRY_TIMEOUT seconds rather than the SDK's 120: a GCS that cannot be reached answers the
        # client 503 ERR_STORAGE_UNAVAILABLE within its network timeout instead of holding it for two minutes.
        self._retry = DEFAULT_RETRY.with_timeout(RETRY_TIMEOUT)
        # Chunk uploads and everything else run in separate thread pools, so a HEAD never queues behind chunks.
        self._call = Blocking(16, "pytusd-gcs")
        self._send = Blocking(self.concurrent_chunk_uploads, "pytusd-gcs-chunk")

    @classmethod
    def from_options(cls, bucket: str, *, object_prefix: str = "", endpoint: str = "") -> GCSStore:
        """A store with a client built from the environment (see :func:`make_client`)."""
        return cls(bucket, make_client(endpoint=endpoint), object_prefix=object_prefix)

    def __repr__(self) -> str:
        where = getattr(getattr(self.client, "_connection", None), "API_BASE_URL", "")
        return f"GCSStore({self.bucket!r}, prefix={self.object_prefix!r}, endpoint={where!r})"

    # -- names ----------------------------------------------------------------------------------------------------

    def object_key(self, upload_id: str) -> str:
        """``<prefix>/<id>``: the name of the finished upload's object, and the stem of all its other objects."""
        prefix = self.object_prefix
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return prefix + upload_id

    @staticmethod
    def info_name(key: str) -> str:
        return key + ".info"

    @staticmethod
    def expired_name(key: str) -> str:
        """``<key>.expired``: what an expired upload leaves (a few bytes), so that it answers 410 for a while."""
        return key + ".expired"

    @staticmethod
    def chunk_name(key: str, number: int) -> str:
        return f"{key}_{number - 1}"  # tusd numbers its chunk objects from 0

    @staticmethod
    def temporary_name(key: str, level: int, index: int) -> str:
        return f"{key}_tmp_{level}_{index}"

    @property
    def plan(self) -> PiecePlan:
        """Every chunk is ``chunk_size`` bytes but a request's last; GCS composes any number of them."""
        return PiecePlan(preferred_size=self.chunk_size, max_size=self.chunk_size, doubling=None)

    def final_attributes(self, info: UploadInfo) -> tuple[str, dict[str, str]]:
        """Content-Type and custom metadata of the finished upload's object.

        The type is what GET serves (``filetype`` when it is a well-formed media type). Metadata that would pass
        GCS's 8 KiB limit is left out (with a warning) rather than making the upload impossible to finish."""
        content_type = download_headers(info.metadata)[0]
        metadata: dict[str, str] = {}
        used = 0
        for key, value in info.metadata.items():
            if not key:
                continue
            cost = len(key.encode()) + len(value.encode())
            if used + cost > MAX_CUSTOM_METADATA:
                log.warning("upload %s: metadata %r left off the GCS object (over GCS's 8 KiB limit)", info.id, key)
                continue
            metadata[key] = value
            used += cost
        return content_type, metadata

    # -- blocking calls (run in the thread pools) -----------------------------------------------------------------

    def _blob(self, name: str, generation: int | None = None) -> Any:
        return self._blob_class(name, self._bucket, generation=generation)

    def _head(self, name: str) -> StoredObject | None:
        blob = self._bucket.get_blob(name, retry=self._retry)
        return None if blob is None else _object_of(blob)

    def _read_info(self, key: str) -> bytes | None:
        try:
            return bytes(self._blob(self.info_name(key)).download_as_bytes(retry=self._retry))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise

    def _list(self, key: str) -> tuple[list[Chunk], list[str]]:
        """The chunk objects (numbered from 1) and the intermediate objects of the upload at ``key``."""
        chunks: list[Chunk] = []
        temporaries: list[str] = []
        names: set[str] = set()
        stem = key + "_"
        for blob in self.client.list_blobs(self.bucket, prefix=stem, retry=self._retry):
            name = str(blob.name)
            names.add(name)
            suffix = name[len(stem) :]
            if _CHUNK_SUFFIX.fullmatch(suffix):
                chunks.append(Chunk(int(suffix) + 1, _object_of(blob)))
            elif _TEMPORARY_SUFFIX.fullmatch(suffix):
                temporaries.append(name)
        # An object that has a .info beside it is another upload's (IDs "a" and "a_1"), not a chunk of this one.
        chunks = [c for c in chunks if c.object.name + ".info" not in names]
        temporaries = [t for t in temporaries if t + ".info" not in names]
        return chunks, temporaries

    def _put_info(self, key: str, info: UploadInfo, if_generation_match: int | None = None) -> None:
        self._blob(self.info_name(key)).upload_from_string(
            info.to_json(),
            content_type="application/json",
            if_generation_match=if_generation_match,
            retry=self._retry,
        )

    def _upload_chunk(self, name: str, spool: IO[bytes] | None, size: int) -> StoredObject:
        import google_crc32c

        checksum = google_crc32c.Checksum()
        if spool is not None:
            spool.seek(0)
            while block := spool.read(MIB):
                checksum.update(block)
            spool.seek(0)
        blob = self._blob_class(name, self._bucket, chunk_size=UPLOAD_BUFFER)
        # Sent with the object: GCS refuses to create it when the bytes it received do not match.
        blob.crc32c = base64.b64encode(checksum.digest()).decode("ascii")
        if spool is None:
            blob.upload_from_string(b"", content_type=OCTET_STREAM, checksum=None, retry=self._retry)
        else:
            blob.upload_from_file(spool, size=size, content_type=OCTET_STREAM, checksum=None, retry=self._retry)
        stored = _object_of(blob, fallback_size=size)
        if stored.size != size:
            raise errors.ERR_INTERNAL_SERVER_ERROR(f"GCS stored {stored.size} bytes of the {size} of {name}")
        return stored

    def _put_empty(self, name: str, content_type: str, metadata: dict[str, str]) -> StoredObject:
        blob = self._blob(name)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_string(b"", content_type=content_type, retry=self._retry)
        return _object_of(blob)

    def _compose_once(
        self, sources: list[StoredObject], name: str, content_type: str | None, metadata: dict[str, str] | None
    ) -> StoredObject:
        destination = self._blob(name)
        destination.content_type = content_type or OCTET_STREAM
        if metadata:
            destination.metadata = metadata
        generations = [s.generation for s in sources]
        destination.compose(
            [self._blob(s.name) for s in sources],
            # The sources exactly as listed: a chunk replaced since (it cannot be, under the lock) fails the call.
            if_source_generation_match=generations if all(g is not None for g in generations) else None,
            retry=self._retry,
        )
        return _object_of(destination)

    def _delete_one(self, name: str) -> None:
        try:
            self._blob(name).delete(retry=self._retry)
        except Exception as exc:
            if not _is_missing(exc):
                raise

    def _read_range(self, obj: StoredObject, first: int, stop: int) -> bytes:
        data = self._blob(obj.name, obj.generation).download_as_bytes(
            start=first, end=stop - 1, checksum=None, retry=self._retry
        )
        if len(data) != stop - first:
            raise errors.ERR_INTERNAL_SERVER_ERROR(
                f"GCS returned {len(data)} bytes of {obj.name} for a range of {stop - first}"
            )
        return bytes(data)

    # -- async helpers --------------------------------------------------------------------------------------------

    async def _delete(self, names: Sequence[str]) -> None:
        await gather_all([self._call(self._delete_one, name) for name in names])

    async def _delete_quietly(self, names: Sequence[str]) -> None:
        try:
            await self._delete(names)
        except Exception as exc:  # housekeeping: what is left is removed by a later finish or terminate
            log.warning("could not delete %d GCS objects (%s...): %s", len(names), names[0], exc)

    def _download(self, obj: StoredObject, first: int, stop: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``first`` up to ``stop`` of one object (pinned to its generation), one ranged request per block,
        the next block fetched while the current one is passed on."""
        return read_ahead(functools.partial(self._call, self._read_range, obj), first, stop, READ_BLOCK)

    async def _compose(
        self, sources: list[StoredObject], name: str, content_type: str, metadata: dict[str, str]
    ) -> StoredObject:
        """Compose ``sources`` into ``name``: at most 32 per call, through intermediate objects (deleted after);
        then check the result's size and CRC32C against the sources'."""
        expected_size = sum(s.size for s in sources)
        expected_crc = await self._call(_combined_crc, sources)  # CPU work: thousands of chunks take a while
        temporaries: list[str] = []
        level = 0
        try:
            while len(sources) > MAX_COMPOSE_SOURCES:
                groups = [sources[i : i + MAX_COMPOSE_SOURCES] for i in range(0, len(sources), MAX_COMPOSE_SOURCES)]
                names = [self.temporary_name(name, level, i) for i in range(len(groups))]
                temporaries.extend(names)
                sources = await gather_all(
                    [
                        self._call(self._compose_once, group, temporary, None, None)
                        for group, temporary in zip(groups, names, strict=True)
                    ]
                )
                level += 1
            result = await self._call(self._compose_once, sources, name, content_type, metadata)
            actual_crc = _crc_from_gcs(result.crc32c)
            if result.size != expected_size or (
                expected_crc is not None and actual_crc is not None and actual_crc != expected_crc
            ):
                await self._call(self._delete_one, name)
                raise errors.ERR_INTERNAL_SERVER_ERROR(
                    f"GCS compose of {name} does not match its sources: {result.size} bytes, CRC32C {result.crc32c}; "
                    f"expected {expected_size} bytes, CRC32C "
                    f"{_crc_to_gcs(expected_crc) if expected_crc is not None else 'unknown'}"
                )
            return result
        finally:
            if temporaries:
                await self._delete_quietly(temporaries)

    # -- reading the state ----------------------------------------------------------------------------------------

    async def _load(self, upload: GCSUpload) -> _State:
        raw_info, (chunks, temporaries), final = await upload._gather(
            self._call(self._read_info, upload.key),
            self._call(self._list, upload.key),
            self._call(self._head, upload.key),
        )
        if raw_info is None:
            try:
                tombstone = await self._call(self._head, self.expired_name(upload.key))
            except Exception as exc:
                raise _storage_error(exc) from exc
            if tombstone is not None:
                raise errors.ERR_UPLOAD_EXPIRED()
            raise errors.ERR_UPLOAD_NOT_FOUND()
        info = UploadInfo.from_json(raw_info)
        if info.id != upload.id:
            info = info.replace(id=upload.id)
        state = _State(info=info, final=final, temporaries=temporaries)
        state.pieces = contiguous(chunks)
        state.next_number = len(state.pieces) + 1
        counted = {c.number for c in state.pieces}
        state.stale = [c.object.name for c in chunks if c.number not in counted]
        return state

    # -- DataStore ------------------------------------------------------------------------------------------------

    async def create(self, info: UploadInfo) -> GCSUpload:
        preset = bool(info.id)
        upload_id = info.id or new_upload_id()
        upload = GCSUpload(self, upload_id)
        info = info.replace(
            id=upload_id,
            offset=0,
            storage={"Type": "gcsstore", "Bucket": self.bucket, "Key": upload.key},
        )
        try:
            if preset:  # an ID chosen by a hook may exist already: never adopt another upload's objects
                existing_info, (chunks, _), final = await asyncio.gather(
                    self._call(self._head, self.info_name(upload.key)),
                    self._call(self._list, upload.key),
                    self._call(self._head, upload.key),
                )
                if existing_info is not None or chunks or final is not None:
                    raise errors.ERR_INTERNAL_SERVER_ERROR(f"an upload with ID {upload_id!r} exists already")
            await self._call(self._put_info, upload.key, info, 0 if preset else None)
        except Exception as exc:
            if _status(exc) == 412:
                raise errors.ERR_INTERNAL_SERVER_ERROR(f"an upload with ID {upload_id!r} exists already") from exc
            raise _storage_error(exc) from exc
        upload._state = _State(info=info)
        return upload

    async def ready(self) -> None:
        """Readiness (``/ready``) and the start-up check: the bucket answers a metadata read (``buckets.get``);
        a missing bucket raises the SDK's NotFound, which the ``pytusd`` command treats as fatal."""
        await self._call(self._bucket.reload, retry=self._retry)

    async def get(self, upload_id: str) -> GCSUpload:
        upload = GCSUpload(self, upload_id)
        await upload.state()
        return upload

    # -- capabilities ---------------------------------------------------------------------------------------------

    async def upload_ids(self) -> AsyncIterator[str]:
        """Every upload, from the names of the ``.info`` objects under the prefix."""
        stem = self.object_key("")

        def names() -> list[str]:
            return [b.name for b in self.client.list_blobs(self.bucket, prefix=stem, retry=self._retry)]

        try:
            listed = await self._call(names)
        except Exception as exc:
            raise _storage_error(exc) from exc
        for name in listed:
            if name.endswith(".info") and len(name) > len(stem) + len(".info"):
                yield name[len(stem) : -len(".info")]

    async def _terminate(self, upload: GCSUpload) -> None:
        """Delete the chunks, intermediate objects and final object, then the .info (last, so that a failure
        leaves an upload that can be terminated again)."""
        try:
            chunks, temporaries = await self._call(self._list, upload.key)
            await self._delete([c.object.name for c in chunks] + temporaries + [upload.key])
            await self._call(self._delete_one, self.info_name(upload.key))
        except Exception as exc:
            upload._state = None
            raise _storage_error(exc) from exc
        upload._state = None

    async def _expire(self, upload: GCSUpload) -> None:
        """Leave ``<key>.expired`` (so that the upload answers 410 from now on), then remove every object of the
        upload as termination does: chunks, intermediate objects, final object, ``.info``."""
        blob = self._blob(self.expired_name(upload.key))
        try:
            await self._call(
                functools.partial(blob.upload_from_string, str(int(time.time())).encode(), retry=self._retry)
            )
        except Exception as exc:
            raise _storage_error(exc) from exc
        await self._terminate(upload)

    async def forget_expired(self, older_than: float) -> int:
        """Remove the ``.expired`` objects written before ``older_than`` (those uploads answer 404 then)."""
        stem = self.object_key("")

        def old() -> list[str]:
            return [
                str(b.name)
                for b in self.client.list_blobs(self.bucket, prefix=stem, retry=self._retry)
                if str(b.name).endswith(".expired") and _object_of(b).updated < older_than
            ]

        try:
            names = await self._call(old)
            if names:
                await self._delete(names)
        except Exception as exc:
            raise _storage_error(exc) from exc
        return len(names)

    async def _concat(self, final: GCSUpload, partials: Sequence[Upload]) -> None:
        """Compose the partials' final objects into the final upload's object (a partial that is complete but not
        finished yet contributes its chunk objects). Partials of another store are streamed instead."""
        own = [p for p in partials if isinstance(p, GCSUpload) and p._store.bucket == self.bucket]
        if len(own) != len(partials):
            await concat_by_streaming(final, partials)
            return
        state = await final.state()
        sources: list[StoredObject] = []
        for partial in own:
            partial_state = await partial.state()
            if partial_state.final is not None:
                sources.append(partial_state.final)
            else:
                sources.extend(c.object for c in partial_state.pieces)
        sources = [s for s in sources if s.size]  # empty objects add nothing and would take compose slots
        content_type, metadata = self.final_attributes(state.info)
        try:
            if sources:
                state.final = await self._compose(sources, final.key, content_type, metadata)
            else:
                state.final = await self._call(self._put_empty, final.key, content_type, metadata)
        except Exception as exc:
            final._state = None
            raise _storage_error(exc) from exc


def make_client(*, endpoint: str = "", max_pool_connections: int = 32) -> Client:
    """A ``google.cloud.storage.Client`` with credentials from the environment.

    * ``GCS_SERVICE_ACCOUNT_FILE`` (tusd's variable) names a service account key file: it is used when set.
    * Else, with an ``endpoint`` (an emulator; ``STORAGE_EMULATOR_HOST`` counts as one when ``endpoint`` is empty),
      requests go unauthenticated, unless ``GOOGLE_APPLICATION_CREDENTIALS`` is set (a private endpoint of real
      GCS), which is then used.
    * Else application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's, the metadata server).

    Raises ValueError when no credentials can be found or the key file is unusable, ImportError when
    google-cloud-storage is not installed. ``max_pool_connections`` bounds the HTTP connections kept open; it must
    be at least the store's threads (16 plus ``concurrent_chunk_uploads``), else connections are discarded and
    reopened.
    """
    storage = _sdk()
    import google.auth
    import google.auth.exceptions
    import requests.adapters
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST", "")
    if endpoint and "://" not in endpoint:
        endpoint = "http://" + endpoint
    endpoint = endpoint.rstrip("/")
    account_file = os.environ.get("GCS_SERVICE_ACCOUNT_FILE", "")
    project: str | None = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    credentials: Any
    if account_file:
        from google.oauth2 import service_account

        try:
            credentials = service_account.Credentials.from_service_account_file(
                account_file, scopes=[READ_WRITE_SCOPE]
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(
                f"GCS_SERVICE_ACCOUNT_FILE={account_file!r} is not a usable service account key: {exc}"
            ) from exc
        project = credentials.project_id or project
    elif endpoint and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        credentials = AnonymousCredentials()
    else:
        try:
            credentials, default_project = google.auth.default(scopes=[READ_WRITE_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise ValueError(
                "no Google Cloud credentials found: set GCS_SERVICE_ACCOUNT_FILE to a service account key file, or "
                f"configure application default credentials ({exc})"
            ) from exc
        project = project or default_project
    session = AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(1, max_pool_connections))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return storage.Client(
        project=project,  # None: no project (only bucket listing and creation need one)
        credentials=credentials,
        _http=session,
        client_options={"api_endpoint": endpoint} if endpoint else None,
    )


__all__ = ["GCSStore", "GCSUpload", "crc32c_combine", "make_client"]
