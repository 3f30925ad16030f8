"""S3Store: uploads as S3 multipart uploads, in the object layout of tusd's s3store.

For an upload with ID ``<objectId>+<multipartId>`` the bucket holds

* ``<prefix><objectId>``: the object, built by a multipart upload (``multipartId``) and complete once finished;
* ``<prefix><objectId>.info``: the upload info as tusd's FileInfo JSON;
* ``<prefix><objectId>.part``: the bytes after the last part while they are fewer than S3's minimum part size.

Nothing about an upload lives in the process: its offset is the sum of its parts (ListParts) plus the tail object,
so any pytusd process, restarted or another one behind the load balancer, resumes any upload. A bucket written by
tusd is served as it is.

A PATCH body is cut into parts while it arrives. Each part is spooled to an unnamed temporary file and uploaded
from a thread (boto3, see README "S3" for why not an async client); at most ``max_buffered_parts`` spools exist
per request and at most ``concurrent_part_uploads`` parts upload at once across the store, so memory stays flat
and a fast client is slowed to the speed of S3 instead of filling the disk. Only bytes that S3 confirmed are ever
counted in the offset:

* parts count only while their numbers run on from 1 without a gap. A part that failed (or was cut off by a
  crash) leaves a gap, and what was stored after it is an orphan: the next write records the orphans' numbers as
  skipped in the ``.info`` (``Storage["PytusdSkipParts"]``) before it uploads anything and numbers its parts after
  them, so an orphan can never join the run later with bytes from the wrong offset; finish lists only the run;
* the tail object records in its metadata the offset it starts at; a tail whose bytes went into a part since (a
  crash between the two steps) no longer matches and is ignored, so nothing is counted twice.

The part size grows with the upload so that no upload ever needs more than 10,000 parts: for a known length it is
``max(part_size, length / 10000)``; for a deferred length it doubles every 1,000 parts. A PATCH that ends with
fewer bytes than the part size leaves them as a short part when the remaining parts can still hold the rest of the
upload (5 TiB for a deferred length), else as the tail object (tusd #1247).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .. import errors, extras
from ..info import UploadInfo, new_upload_id
from ..observe import logs
from .base import Capabilities, Upload
from .objects.engine import PieceUpload, State, StoreNames, storage_error
from .objects.plan import PiecePlan
from .objects.spool import Blocking, concat_by_streaming, gather_all, spool_md5

if TYPE_CHECKING:
    from botocore.config import _S3Dict  # botocore-stubs' TypedDict for Config(s3=...)

log = logging.getLogger("pytusd.s3")

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_PART_SIZE = 50 * MIB  # tusd's preferred part size
DEFAULT_MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * GIB
DEFERRED_DOUBLING = 1_000  # a deferred-length upload's part size doubles every this many parts
READ_BLOCK = 1 * MIB
TAIL_OFFSET_KEY = "pytusd-tail-offset"
LAYOUT_KEY = "PytusdLayout"  # in the .info's Storage: how the upload's bytes are stored until it is finished
PIECE_OBJECTS = "piece-objects"  # the readable layout: each part is its own object <objectId>.p<N> until finished

_NON_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_PIECE_SUFFIX = re.compile(r"\.p[0-9]+\Z")  # <objectId>.p<N>: an ID ending so would name another upload's piece
_HEADER_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")



def PartPlan(  # noqa: N802 - the name the part plan had before it became a PiecePlan
    *,
    part_size: int = DEFAULT_PART_SIZE,
    min_part_size: int = DEFAULT_MIN_PART_SIZE,
    max_part_size: int = MAX_PART_SIZE,
    max_parts: int = MAX_PARTS,
    max_object_size: int = MAX_OBJECT_SIZE,
) -> PiecePlan:
    """How an upload is cut into S3 parts: S3's limits; a deferred length may reach the largest object."""
    return PiecePlan(
        preferred_size=part_size,
        min_size=min_part_size,
        max_size=max_part_size,
        max_pieces=max_parts,
        max_total=max_object_size,
        max_deferred=max_object_size,
        doubling=DEFERRED_DOUBLING,
        limit_name="S3 objects",
    )


# --- state derived from S3 -----------------------------------------------------------------------------------------


@dataclass
class Part:
    number: int
    size: int
    etag: str


SKIP_KEY = "PytusdSkipParts"
REPAIR_KEY = "PytusdRepairRanges"  # byte ranges to keep while an object with leftover parts is being cut


def parse_skips(text: str) -> list[tuple[int, int]]:
    """``"3-5,9-9"`` -> [(3, 5), (9, 9)]: part numbers that hold no bytes of the upload."""
    ranges = []
    for item in text.split(","):
        first, _, last = item.strip().partition("-")
        if first.isdigit() and last.isdigit() and int(first) <= int(last):
            ranges.append((int(first), int(last)))
    return sorted(ranges)


def chain(parts: Sequence[Part], skips: Sequence[tuple[int, int]]) -> tuple[list[Part], int]:
    """The parts that form the upload: numbered 1, 2, 3, ... leaving out the skipped numbers, up to the first
    gap. Returns them and the number the next part gets."""

    def after_skips(number: int) -> int:
        for first, last in skips:
            if first <= number <= last:
                number = last + 1
        return number

    run: list[Part] = []
    expected = after_skips(1)
    for part in sorted(parts, key=lambda p: p.number):
        if part.number < expected:  # a skipped number
            continue
        if part.number != expected:
            break
        run.append(part)
        expected = after_skips(expected + 1)
    return run, expected


@dataclass
class _State(State[Part]):
    orphans: list[int] = field(default_factory=list)  # numbers of stored parts beyond the run (after a gap)
    leftovers: list[Part] = field(default_factory=list)  # every stored part that is not in the run
    data_modified: float = 0.0  # when the newest part or the tail object was stored
    tail_etag: str = ""  # the tail object's ETag when it was loaded (reads of it check that it is still the same)
    object_modified: float | None = None  # a completed upload's object's Last-Modified, when the load read it
    # The multipart upload is gone but the object was never completed: aborted (a lifecycle rule, by hand). An
    # upload of tusd's layout has lost its parts (``lost``: not found); the readable layout's bytes are in its piece
    # objects, and finish starts a new multipart upload (``multipart_lost``).
    lost: bool = False
    multipart_lost: bool = False

    @property
    def piece_objects(self) -> bool:
        """The readable layout (``S3Store(readable_uploads=True)`` when it was created): parts are objects."""
        return self.info.storage.get(LAYOUT_KEY) == PIECE_OBJECTS

    @property
    def offset(self) -> int:
        return self.info.size if self.completed else self.pieces_size + self.tail_size


_EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).digest()


def content_md5(spool: IO[bytes] | None) -> str | None:
    """The Content-MD5 header of a piece (base64 of the MD5 computed while it was spooled), so that S3 refuses
    the bytes with BadDigest should they be damaged on the way; None when the spool was not hashed."""
    digest = _EMPTY_MD5 if spool is None else spool_md5(spool)
    return None if digest is None else base64.b64encode(digest).decode()


def _piece_body(spool: IO[bytes] | None) -> tuple[Any, dict[str, Any]]:
    """A piece's request body (its spool from the start, or nothing) and its ``ContentMD5`` argument, if hashed."""
    body: Any = b""
    if spool is not None:
        spool.seek(0)
        body = spool
    md5 = content_md5(spool)
    return body, ({"ContentMD5": md5} if md5 is not None else {})


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_missing(exc: BaseException) -> bool:
    return _error_code(exc) in ("NoSuchKey", "NotFound", "404")


def _storage_error(exc: BaseException) -> errors.TusError:
    return storage_error(exc, "S3")


# --- the upload ----------------------------------------------------------------------------------------------------


class S3Upload(PieceUpload[Part, _State]):
    """One upload in an :class:`S3Store`: pieces are the multipart upload's parts, the tail is ``.part``."""

    names = StoreNames("S3", "part", "the tail object", log)
    _store: S3Store

    def __init__(self, store: S3Store, object_id: str, multipart_id: str, state: _State | None = None) -> None:
        super().__init__(store, f"{object_id}+{multipart_id}", state, max_buffered=store.max_buffered_parts)
        self.object_id = object_id
        self.multipart_id = multipart_id

    # -- the engine's backend (PieceUpload) -----------------------------------------------------------------------

    async def _put_piece(self, state: _State, number: int, start: int, spool: IO[bytes] | None, size: int) -> Part:
        return await self._store._upload_part(self, number, spool, size, as_object=state.piece_objects)

    async def _put_info(self, info: UploadInfo) -> None:
        await self._store._put_info(self, info)

    def _spool_md5(self) -> bool:
        return self._store.content_md5  # sent as each part's and the tail's Content-MD5

    async def _before_pieces(self, state: _State) -> None:
        if state.orphans:
            await self._store._skip_orphans(self, state)

    def _chain(self, state: _State, pieces: list[Part]) -> tuple[list[Part], int]:
        return chain(pieces, parse_skips(state.info.storage.get(SKIP_KEY, "")))

    async def _commit(self, state: _State, pieces: list[Part]) -> None:
        store = self._store
        if state.piece_objects:
            await store._complete_from_piece_objects(self, state, pieces)
            return
        if not pieces:  # an empty upload still needs one (empty) part
            pieces.append(await store._upload_part(self, 1, None, 0))
        if state.leftovers:
            await store._complete_around_leftovers(self, state, pieces)
        else:
            await store._complete(self, self.multipart_id, pieces)

    async def _put_tail(self, spool: IO[bytes], starts_at: int) -> None:
        etag = await self._store._put_tail(self, spool, starts_at)
        if self._state is not None:  # a read of the tail by this object checks that it is still this one
            self._state.tail_etag = etag

    async def _tail_bytes(self, size: int) -> AsyncIterator[bytes]:
        store = self._store
        response = await store._call(store.client.get_object, Bucket=store.bucket, Key=store.tail_key(self))
        async for block in store._blocks(response):
            yield block

    async def _delete_tail(self) -> None:
        await self._store._delete_quietly(self._store.tail_key(self))

    # -- reading ----------------------------------------------------------------------------------------------------

    def stored_reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        state = self._state
        if state is not None and not state.completed and not state.piece_objects:
            # Said before the answer starts: tusd's layout keeps an unfinished upload's bytes in parts, unreadable
            # (a store with readable_uploads declares readable_while_incomplete for the uploads it creates).
            raise errors.ERR_INCOMPLETE_UPLOAD()
        return self._stored_bytes(start, end)

    async def _stored_bytes(self, start: int, end: int | None, attempts: int = 3) -> AsyncIterator[bytes]:
        store = self._store
        state = await self.state()
        if state.piece_objects and not state.completed:
            async for block in store._read_unfinished(self, state, start, end, attempts):
                yield block
            return
        kwargs: dict[str, Any] = {"Bucket": store.bucket, "Key": store.object_key(self.object_id)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            response = await store._call(store.client.get_object, **kwargs)
        except Exception as exc:
            if _is_missing(exc):
                raise errors.ERR_INCOMPLETE_UPLOAD() from exc
            raise _storage_error(exc) from exc
        async for block in store._blocks(response):
            yield block

    async def modified_time(self) -> float:
        state = await self.state()
        if not state.completed:
            return max(state.info_modified, state.data_modified)
        if state.object_modified is None:  # completed by this object since it loaded
            store = self._store
            try:
                modified = await store._call(store._object_modified, self)
            except Exception as exc:
                raise _storage_error(exc) from exc
            if not modified:  # no object (0.0), or none this policy may see (None)
                raise errors.ERR_INCOMPLETE_UPLOAD()
            state.object_modified = modified
        return state.object_modified

    # -- capabilities (S3Store.capabilities) ----------------------------------------------------------------------

    async def concat(self, partials: Sequence[Upload]) -> None:
        await self._store._concat(self, partials)

    async def expire(self) -> None:
        await self._store._expire(self)


# --- the store -----------------------------------------------------------------------------------------------------


class S3Store:
    """Stores uploads in an S3 bucket (AWS or compatible: Ceph RADOS Gateway, MinIO, ...).

    ``client`` is a boto3 S3 client (see :func:`make_client`). Capabilities: termination, creation-defer-length,
    concatenation (UploadPartCopy, or streaming the partials when one is below the minimum part size), checksum
    (a chunk is verified before any of it is stored: :meth:`PieceUpload.write_verified`), expiration, and
    reclaiming uploads whose multipart upload a lifecycle rule aborted (:meth:`reclaim`).
    """

    # GET cannot stream an unfinished upload: its bytes are parts of a multipart upload, not yet an object. With
    # readable_uploads (another layout) it can: see __init__.
    capabilities = Capabilities(
        annotate=True,
        terminate=True,
        declare_length=True,
        concat=True,
        write_verified=True,
        expire=True,
        modified_time=True,
        reclaim=True,
        readable_while_incomplete=False,
    )

    def __init__(
        self,
        bucket: str,
        client: Any,
        *,
        object_prefix: str = "",
        metadata_object_prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        min_part_size: int = DEFAULT_MIN_PART_SIZE,
        max_part_size: int = MAX_PART_SIZE,
        max_buffered_parts: int = 20,
        concurrent_part_uploads: int = 10,
        disable_content_hashes: bool = False,
        temp_dir: str | None = None,
        log_api_calls: bool = False,
        readable_uploads: bool = False,
        content_md5: bool = False,
    ) -> None:
        if min_part_size > part_size:
            raise ValueError("the minimum part size cannot exceed the part size")
        self.bucket = bucket
        self.client = client
        self.object_prefix = object_prefix
        self.metadata_object_prefix = metadata_object_prefix
        self.plan = PartPlan(part_size=part_size, min_part_size=min_part_size, max_part_size=max_part_size)
        self.max_buffered_parts = max(1, max_buffered_parts)
        self.concurrent_part_uploads = max(1, concurrent_part_uploads)
        self.disable_content_hashes = disable_content_hashes
        # --s3-content-md5: each part and tail object sent with the Content-MD5 computed while it is spooled, so S3
        # refuses bytes damaged on the way (BadDigest). Off by default: it costs about 1.6 CPU-s per GiB on the
        # event loop (bench/NOTES.md), and signed parts carry their SHA-256 in the signature already.
        self.content_md5 = content_md5
        # The readable layout for the uploads this store creates (each part an object <objectId>.p<N> until the
        # upload is finished, then copied into the multipart upload on the server); every upload is read in the
        # layout its .info records, whatever this flag says.
        self.readable_uploads = readable_uploads
        if readable_uploads:
            self.capabilities = dataclasses.replace(S3Store.capabilities, readable_while_incomplete=True)
        self.temp_dir = temp_dir
        # Part uploads and everything else run in separate thread pools, so that a HEAD never queues behind parts.
        self._call = Blocking(16, "pytusd-s3")
        self._send = Blocking(self.concurrent_part_uploads, "pytusd-s3-part")
        self._part_slots: asyncio.Semaphore | None = None
        self._http: Any = None
        # tusd's -s3-log-api-calls: one line per S3 API call (log_api_calls below), presigned part uploads included.
        self.log_api_calls = log_api_calls
        if log_api_calls:
            log_api_calls_of(client)

    async def ready(self) -> None:
        """Readiness (``/ready``): the bucket answers HeadBucket."""
        await self._call(self.client.head_bucket, Bucket=self.bucket)

    def __repr__(self) -> str:
        meta = getattr(self.client, "meta", None)
        where = getattr(meta, "endpoint_url", "")
        accelerated = (getattr(getattr(meta, "config", None), "s3", None) or {}).get("use_accelerate_endpoint")
        more = ", transfer acceleration" if accelerated else ""
        return f"S3Store({self.bucket!r}, prefix={self.object_prefix!r}, endpoint={where!r}{more})"

    # -- keys -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _with_prefix(prefix: str, key: str) -> str:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return prefix + key

    def object_key(self, object_id: str) -> str:
        return self._with_prefix(self.object_prefix, object_id)

    def meta_key(self, name: str) -> str:
        return self._with_prefix(self.metadata_object_prefix or self.object_prefix, name)

    def info_key(self, upload: S3Upload) -> str:
        return self.meta_key(upload.object_id + ".info")

    def expired_key(self, object_id: str) -> str:
        """What an expired upload leaves (a few bytes), so that it answers 410 for a while."""
        return self.meta_key(object_id + ".expired")

    def tail_key(self, upload: S3Upload) -> str:
        return self.meta_key(upload.object_id + ".part")

    def piece_prefix(self, object_id: str) -> str:
        """What the keys of an upload's piece objects (the readable layout) start with: ``<objectId>.p``."""
        return self.object_key(object_id) + ".p"

    def piece_key(self, object_id: str, number: int) -> str:
        return f"{self.piece_prefix(object_id)}{number}"

    # -- plumbing -------------------------------------------------------------------------------------------------

    async def _blocks(self, response: Any) -> AsyncIterator[bytes]:
        """The body of a GetObject answer, read from a thread a block at a time."""
        body = response["Body"]
        try:
            while block := await self._call(body.read, READ_BLOCK):
                yield block
        finally:
            body.close()

    async def _upload_part(
        self, upload: S3Upload, number: int, spool: IO[bytes] | None, size: int, *, as_object: bool = False
    ) -> Part:
        """Part ``number``: of the multipart upload, or (``as_object``, the readable layout) the object
        ``<objectId>.p<N>``."""
        if self._part_slots is None:
            self._part_slots = asyncio.Semaphore(self.concurrent_part_uploads)
        async with self._part_slots:
            if self.disable_content_hashes:
                etag = await self._send(self._put_part_presigned, upload, number, spool, size, as_object)
            elif as_object:
                etag = await self._send(self._put_piece_object, upload, number, spool, size)
            else:
                etag = await self._send(self._put_part, upload, number, spool, size)
        return Part(number, size, etag)

    def _put_piece_object(self, upload: S3Upload, number: int, spool: IO[bytes] | None, size: int) -> str:
        body, kwargs = _piece_body(spool)
        response = self.client.put_object(
            Bucket=self.bucket, Key=self.piece_key(upload.object_id, number), Body=body, ContentLength=size, **kwargs
        )
        return str(response["ETag"])

    def _put_part(self, upload: S3Upload, number: int, spool: IO[bytes] | None, size: int) -> str:
        body, kwargs = _piece_body(spool)
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.object_key(upload.object_id),
            UploadId=upload.multipart_id,
            PartNumber=number,
            Body=body,
            ContentLength=size,
            **kwargs,
        )
        return str(response["ETag"])

    def _put_part_presigned(
        self, upload: S3Upload, number: int, spool: IO[bytes] | None, size: int, as_object: bool = False
    ) -> str:
        """UploadPart (PutObject of a piece object in the readable layout) through a presigned URL: the payload is
        not hashed for the signature (tusd's --s3-disable-content-hashes), which saves a SHA-256 pass over every
        byte."""
        import httpx

        params: dict[str, Any]
        if as_object:
            operation, params = "put_object", {"Bucket": self.bucket, "Key": self.piece_key(upload.object_id, number)}
        else:
            operation, params = "upload_part", {
                "Bucket": self.bucket,
                "Key": self.object_key(upload.object_id),
                "UploadId": upload.multipart_id,
                "PartNumber": number,
            }
        url = self.client.generate_presigned_url(operation, Params=params, ExpiresIn=900)
        if self._http is None:
            self._http = httpx.Client(timeout=httpx.Timeout(60.0))
        content: Any = b""
        if spool is not None:
            spool.seek(0)
            content = iter(functools.partial(spool.read, READ_BLOCK), b"")
        headers = {"Content-Length": str(size)}
        md5 = content_md5(spool)
        if md5 is not None:  # not part of the URL's signature, still checked by S3
            headers["Content-MD5"] = md5
        started = time.perf_counter()
        try:
            response = self._http.put(url, content=content, headers=headers)
        except Exception as exc:
            if self.log_api_calls:
                _log_call("PutObject" if as_object else "UploadPart", started, key=params["Key"], part=number,
                          error=errors.one_line(exc), presigned=True)
            raise
        if self.log_api_calls:
            _log_call("PutObject" if as_object else "UploadPart", started, status=response.status_code,
                      key=params["Key"], part=number, presigned=True)
        if response.status_code != 200:
            raise errors.ERR_INTERNAL_SERVER_ERROR(
                f"S3 answered {response.status_code} to a presigned part upload: {response.text[:200]}"
            )
        return str(response.headers.get("etag", ""))

    async def _put_tail(self, upload: S3Upload, spool: IO[bytes], starts_at: int) -> str:
        def put() -> str:
            spool.seek(0)
            kwargs: dict[str, Any] = {}
            md5 = content_md5(spool)
            if md5 is not None:
                kwargs["ContentMD5"] = md5
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self.tail_key(upload),
                Body=spool,
                Metadata={TAIL_OFFSET_KEY: str(starts_at)},
                **kwargs,
            )
            return str(response.get("ETag", ""))

        return await self._call(put)

    async def _delete_quietly(self, key: str) -> None:
        try:
            await self._call(self.client.delete_object, Bucket=self.bucket, Key=key)
        except Exception as exc:  # a stale tail is ignored anyway; removing it is housekeeping
            log.warning("could not delete %s: %s", key, exc)

    async def _complete(self, upload: S3Upload, multipart_id: str, parts: Sequence[Part]) -> None:
        await self._call(
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=self.object_key(upload.object_id),
            UploadId=multipart_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
        )

    async def _complete_from_piece_objects(self, upload: S3Upload, state: _State, pieces: list[Part]) -> None:
        """Finish an upload of the readable layout: copy each piece object into the multipart upload as the part
        of the same number (UploadPartCopy, on the server: no byte goes through pytusd again), complete it, then
        delete the piece objects. A crash before the completion leaves the pieces as they were (the next finish
        copies them again); one after it leaves pieces that the next load of the finished upload deletes."""
        if self._part_slots is None:
            self._part_slots = asyncio.Semaphore(self.concurrent_part_uploads)
        key = self.object_key(upload.object_id)

        multipart_id = upload.multipart_id
        if state.multipart_lost:  # aborted (a lifecycle rule) while the pieces held the bytes: a new one
            multipart_id = await self._create_multipart(upload.object_id, state.info)
            log.warning("upload %s: its multipart upload was aborted; finishing it with a new one", upload.id)

        async def copy(piece: Part) -> Part:
            assert self._part_slots is not None
            async with self._part_slots:
                response = await self._call(
                    self.client.upload_part_copy,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=multipart_id,
                    PartNumber=piece.number,
                    CopySource={"Bucket": self.bucket, "Key": self.piece_key(upload.object_id, piece.number)},
                )
            return Part(piece.number, piece.size, str(response["CopyPartResult"]["ETag"]))

        try:
            if pieces:
                parts = await gather_all(copy(piece) for piece in pieces)
            else:  # an empty upload still needs one (empty) part
                target = upload if multipart_id == upload.multipart_id else S3Upload(self, upload.object_id,
                                                                                     multipart_id)
                parts = [await self._upload_part(target, 1, None, 0)]
                pieces.append(Part(1, 0, parts[0].etag))
            await self._complete(upload, multipart_id, parts)
        except BaseException:
            if multipart_id != upload.multipart_id:  # nothing records the new one: it goes with this attempt
                with contextlib.suppress(Exception):
                    await self._call(self.client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                                     UploadId=multipart_id)
            raise
        await self._delete_keys([self.piece_key(upload.object_id, p.number) for p in [*pieces, *state.leftovers]])

    async def _list_piece_objects(self, object_id: str) -> list[tuple[Part, float]]:
        """The piece objects of an upload (the readable layout), as the bucket lists them, with their times."""
        prefix = self.piece_prefix(object_id)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = await self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        found = []
        for page in pages:
            for obj in page.get("Contents", ()):
                number = obj["Key"][len(prefix) :]
                # Only <objectId>.p<N> (not the .part tail, not another upload's keys that happen to start alike).
                if number.isdigit() and str(int(number)) == number and 1 <= int(number) <= MAX_PARTS:
                    piece = Part(int(number), int(obj["Size"]), str(obj["ETag"]))
                    found.append((piece, obj["LastModified"].timestamp()))
        return found

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete objects, 1,000 per request; housekeeping, so it logs instead of failing."""
        for first in range(0, len(keys), 1000):
            batch = keys[first : first + 1000]
            try:
                response = await self._call(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except Exception as exc:
                log.warning("could not delete %d objects from %s on: %s", len(batch), batch[0], exc)
                continue
            for error in response.get("Errors", ()):
                if error.get("Code") != "NoSuchKey":
                    log.warning("could not delete %s: %s", error.get("Key"), error.get("Message"))

    async def _read_unfinished(
        self, upload: S3Upload, state: _State, start: int, end: int | None, attempts: int = 3
    ) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` of an unfinished upload of the readable layout: from its piece objects in
        order, then the tail object, each with a ranged GetObject. A GET does not hold the upload's lock while it
        streams: when a piece is gone (the upload was finished meanwhile) or the tail changed (its bytes went into
        a piece), the state is loaded again and the rest read from where the bytes are now."""
        stop = state.offset if end is None else min(end, state.offset)
        position = 0
        spans: list[tuple[str, int, int, int, str]] = []  # (key, first byte in it, stop in it, upload offset, etag)
        for piece in state.pieces:
            a, b = max(start, position), min(stop, position + piece.size)
            if a < b:
                spans.append((self.piece_key(upload.object_id, piece.number), a - position, b - position, a, ""))
            position += piece.size
        a, b = max(start, position), min(stop, position + state.tail_size)
        if a < b:
            spans.append((self.tail_key(upload), a - position, b - position, a, state.tail_etag))
        for key, first, last, at, etag in spans:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={first}-{last - 1}"}
            if etag:
                kwargs["IfMatch"] = etag
            try:
                response = await self._call(self.client.get_object, **kwargs)
            except Exception as exc:
                moved = _is_missing(exc) or _error_code(exc) in ("PreconditionFailed", "412")
                if not moved or attempts <= 1:
                    raise _storage_error(exc) from exc
                again = S3Upload(self, upload.object_id, upload.multipart_id)
                async for block in again._stored_bytes(at, stop, attempts - 1):
                    yield block
                return
            async for block in self._blocks(response):
                yield block

    async def _complete_around_leftovers(self, upload: S3Upload, state: _State, parts: list[Part]) -> None:
        """Complete an upload that has parts outside its run (skipped orphans of a failed or crashed request).

        AWS drops parts a CompleteMultipartUpload does not list, but Ceph refuses to complete (InvalidPart), so
        this works for both: complete with every part, the leftovers included, then copy the upload's own byte
        ranges out of that object into the final one (UploadPartCopy, on the server). The ranges are recorded in
        the ``.info`` first, so a crash in between is repaired the next time the upload is loaded.
        """
        everything = sorted([*parts, *state.leftovers], key=lambda p: p.number)
        if everything[-1].number != parts[-1].number:
            raise errors.ERR_INTERNAL_SERVER_ERROR("a leftover part is numbered after the upload's last part")
        for i, part in enumerate(everything[:-1]):  # every part but the last must meet S3's minimum
            if part in state.leftovers and part.size < self.plan.min_size:
                filler = await self._call(
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=self.object_key(upload.object_id),
                    UploadId=upload.multipart_id,
                    PartNumber=part.number,
                    Body=bytes(self.plan.min_size),
                )
                everything[i] = Part(part.number, self.plan.min_size, str(filler["ETag"]))
        ranges: list[list[int]] = []
        position, wanted = 0, {p.number for p in parts}
        for part in everything:
            if part.number in wanted and part.size:
                if ranges and ranges[-1][1] == position - 1:
                    ranges[-1][1] = position + part.size - 1
                else:
                    ranges.append([position, position + part.size - 1])
            position += part.size
        info = state.info.replace(storage={**state.info.storage, REPAIR_KEY: ",".join(f"{a}-{b}" for a, b in ranges)})
        await self._put_info(upload, info)
        state.info = info
        await self._complete(upload, upload.multipart_id, everything)
        await self._finish_repair(upload, state)

    async def _finish_repair(self, upload: S3Upload, state: _State) -> None:
        """Copy the recorded byte ranges of the object over itself, unless that was done already."""
        key = self.object_key(upload.object_id)
        ranges = parse_skips(state.info.storage.get(REPAIR_KEY, ""))
        try:
            head = await self._call(self.client.head_object, Bucket=self.bucket, Key=key)
            if int(head["ContentLength"]) != state.info.size:
                created = await self._call(
                    self.client.create_multipart_upload,
                    Bucket=self.bucket,
                    Key=key,
                    Metadata=head.get("Metadata", {}),
                    ContentType=head.get("ContentType", "binary/octet-stream"),
                )
                repair_id = str(created["UploadId"])
                pieces: list[tuple[int, int]] = []
                for first, last in ranges:
                    count = max(1, math.ceil((last - first + 1) / self.plan.max_size))
                    step = math.ceil((last - first + 1) / count)
                    pieces.extend((a, min(last, a + step - 1)) for a in range(first, last + 1, step))
                parts = []
                for number, (a, b) in enumerate(pieces, 1):
                    copied = await self._call(
                        self.client.upload_part_copy,
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=repair_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": key},
                        CopySourceRange=f"bytes={a}-{b}",
                    )
                    parts.append(Part(number, b - a + 1, str(copied["CopyPartResult"]["ETag"])))
                await self._complete(upload, repair_id, parts)
            info = state.info.replace(storage={k: v for k, v in state.info.storage.items() if k != REPAIR_KEY})
            await self._put_info(upload, info)
            state.info = info
        except Exception as exc:
            raise _storage_error(exc) from exc

    async def _skip_orphans(self, upload: S3Upload, state: _State) -> None:
        """Record the numbers from the gap up to the last orphan as skipped, before anything else is written."""
        first, last = state.next_number, max(state.orphans)
        skips = [*parse_skips(state.info.storage.get(SKIP_KEY, "")), (first, last)]
        storage = {**state.info.storage, SKIP_KEY: ",".join(f"{a}-{b}" for a, b in skips)}
        info = state.info.replace(storage=storage)
        await self._put_info(upload, info)
        log.warning("upload %s: parts %d-%d were stored after a gap; they are skipped", upload.id, first, last)
        state.info, state.orphans, state.next_number = info, [], last + 1

    async def _put_info(self, upload: S3Upload, info: UploadInfo) -> None:
        await self._call(
            self.client.put_object,
            Bucket=self.bucket,
            Key=self.info_key(upload),
            Body=info.to_json(),
            ContentType="application/json",
        )

    # -- reading the state ----------------------------------------------------------------------------------------

    def _object_modified(self, upload: S3Upload) -> float | None:
        """The upload's object's Last-Modified; 0.0 when there is none, None when it cannot be told (a policy
        without s3:ListBucket answers 403 for a missing key). Blocking: run it with ``_call``."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(upload.object_id))
        except Exception as exc:
            if _is_missing(exc):
                return 0.0
            if _error_code(exc) in ("403", "AccessDenied", "Forbidden"):
                return None
            raise
        return float(head["LastModified"].timestamp())

    async def _load(self, upload: S3Upload) -> _State:
        client, bucket = self.client, self.bucket

        def read_info() -> tuple[bytes, float] | None:
            try:
                response = client.get_object(Bucket=bucket, Key=self.info_key(upload))
            except Exception as exc:
                if _is_missing(exc):
                    return None
                raise
            with contextlib.closing(response["Body"]) as body:
                return body.read(), response["LastModified"].timestamp()

        stored: list[float] = []  # when the parts and the tail were written

        def list_parts() -> list[Part] | None:
            parts: list[Part] = []
            marker = 0
            while True:
                try:
                    page = client.list_parts(
                        Bucket=bucket,
                        Key=self.object_key(upload.object_id),
                        UploadId=upload.multipart_id,
                        PartNumberMarker=marker,
                    )
                except Exception as exc:
                    # The multipart upload is gone: completed (AWS says NoSuchUpload, Ceph NoSuchKey).
                    if _error_code(exc) in ("NoSuchUpload", "NoSuchKey", "404"):
                        return None
                    raise
                parts.extend(Part(p["PartNumber"], p["Size"], p["ETag"]) for p in page.get("Parts", ()))
                for p in page.get("Parts", ()):
                    if "LastModified" in p:
                        stored.append(p["LastModified"].timestamp())
                if not page.get("IsTruncated"):
                    return parts
                marker = int(page["NextPartNumberMarker"])

        def head_tail() -> tuple[int, int | None, str]:
            try:
                head = client.head_object(Bucket=bucket, Key=self.tail_key(upload))
            except Exception as exc:
                if _is_missing(exc) or _error_code(exc) in ("403", "AccessDenied", "Forbidden"):
                    return 0, None, ""
                raise
            starts_at = head.get("Metadata", {}).get(TAIL_OFFSET_KEY)
            if "LastModified" in head:
                stored.append(head["LastModified"].timestamp())
            start = int(starts_at) if starts_at and starts_at.isdigit() else None
            return int(head["ContentLength"]), start, str(head.get("ETag", ""))

        async def no_pieces() -> list[tuple[Part, float]] | None:
            return None

        # The readable layout's piece objects are listed beside the parts when this store creates that layout;
        # an upload whose .info records it is listed afterwards otherwise.
        listing = self._list_piece_objects(upload.object_id) if self.readable_uploads else no_pieces()
        raw_info, (listed, piece_objects), (tail_size, tail_start, tail_etag) = await upload._gather(
            self._call(read_info), asyncio.gather(self._call(list_parts), listing), self._call(head_tail)
        )
        info, modified = upload._parse_info(raw_info)
        state = _State(info=info, info_modified=modified, data_modified=max(stored, default=0.0), tail_etag=tail_etag)
        if listed is None and (tail_size or state.piece_objects):
            # The multipart upload is gone: completed, or aborted before that (a lifecycle rule). Only bytes of an
            # unfinished upload left beside it (a .part, piece objects: a finish removes them) make the object worth
            # asking for, so a finished upload whose object was moved away later still reads as finished.
            try:
                if state.piece_objects and piece_objects is None:
                    piece_objects = await self._list_piece_objects(upload.object_id)
                if tail_size or piece_objects:
                    object_time = await self._call(self._object_modified, upload)
                    if object_time == 0.0:  # no object: aborted
                        if not state.piece_objects:
                            state.lost = True
                            return state
                        state.multipart_lost, listed = True, []
                    else:
                        state.object_modified = object_time
            except Exception as exc:
                raise _storage_error(exc) from exc
        if listed is None:
            state.completed = True
            if REPAIR_KEY in info.storage:
                await self._finish_repair(upload, state)
                state.object_modified = None  # the repair may have rewritten it
            if state.piece_objects and piece_objects:  # left by a crash between completing and deleting them
                await self._delete_keys([self.piece_key(upload.object_id, p.number) for p, _ in piece_objects])
            return state
        if state.piece_objects:
            if piece_objects is None:
                try:
                    piece_objects = await self._list_piece_objects(upload.object_id)
                except Exception as exc:
                    raise _storage_error(exc) from exc
            # The multipart upload's own parts (copies from an interrupted finish) do not count: the pieces do.
            listed = [p for p, _ in piece_objects]
            state.data_modified = max([state.data_modified, *(t for _, t in piece_objects)])
        state.pieces, state.next_number = chain(listed, parse_skips(info.storage.get(SKIP_KEY, "")))
        state.orphans = sorted(p.number for p in listed if p.number >= state.next_number)
        in_run = {p.number for p in state.pieces}
        state.leftovers = [p for p in listed if p.number not in in_run]
        # tusd's .part objects do not record where they start: they count as they are.
        state.adopt_tail(tail_size, tail_start, unmarked_counts=True)
        return state

    # -- DataStore ------------------------------------------------------------------------------------------------

    async def create(self, info: UploadInfo) -> S3Upload:
        if not info.size_is_deferred:
            self.plan.check_length(info.size)
        object_id = info.id or new_upload_id()
        if _PIECE_SUFFIX.search(object_id):  # (whatever this store's layout: another process's may be readable)
            raise errors.ERR_INTERNAL_SERVER_ERROR(
                "the pre-create hook chose an ID ending in .p<number>, which names a piece object of another upload "
                "in S3's readable layout"
            )
        try:
            upload = S3Upload(self, object_id, await self._create_multipart(object_id, info))
        except Exception as exc:
            raise _storage_error(exc) from exc
        storage = {"Type": "s3store", "Bucket": self.bucket, "Key": self.object_key(object_id)}
        if self.readable_uploads:
            storage[LAYOUT_KEY] = PIECE_OBJECTS
        info = info.replace(id=upload.id, offset=0, storage=storage)
        try:
            await self._put_info(upload, info)
        except Exception as exc:
            raise _storage_error(exc) from exc
        upload._state = _State(info=info)
        return upload

    async def _create_multipart(self, object_id: str, info: UploadInfo) -> str:
        """A new multipart upload for the object, with the upload's metadata and its ``filetype`` as Content-Type."""
        metadata = {
            _HEADER_TOKEN.sub("_", key): _NON_PRINTABLE.sub("?", value) for key, value in info.metadata.items() if key
        }
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(object_id), "Metadata": metadata}
        filetype = info.metadata.get("filetype", "")
        if filetype and not _NON_PRINTABLE.search(filetype):
            kwargs["ContentType"] = filetype
        response = await self._call(self.client.create_multipart_upload, **kwargs)
        return str(response["UploadId"])

    def _upload_of(self, upload_id: str) -> S3Upload | None:
        """The upload an ID names (``<objectId>+<multipartId>``), not loaded yet; None for an ID of another shape."""
        object_id, _, multipart_id = upload_id.rpartition("+")
        return S3Upload(self, object_id, multipart_id) if object_id and multipart_id else None

    async def get(self, upload_id: str) -> S3Upload:
        upload = self._upload_of(upload_id)
        if upload is None:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        object_id = upload.object_id
        try:
            state = await upload.state()
        except errors.TusError as exc:
            if exc.is_(errors.ERR_UPLOAD_NOT_FOUND) and await self._exists(self.expired_key(object_id)):
                raise errors.ERR_UPLOAD_EXPIRED() from None
            raise
        if state.lost:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        return upload

    async def reclaim(self, upload_id: str) -> bool:
        """Remove what is left of a lost upload (:class:`~pytusd.stores.base.Reclaiming`): one of tusd's layout
        whose multipart upload was aborted (a lifecycle rule) before it was completed leaves its ``.info`` and
        ``.part``. Loaded once more first; False (nothing removed) for any upload that is not lost."""
        upload = self._upload_of(upload_id)
        if upload is None:
            return False
        try:
            state = await upload.state()
        except errors.TusError:
            return False
        if not state.lost:
            return False
        await self._terminate(upload)
        log.info("upload %s: its multipart upload was aborted before it was completed (a lifecycle rule?); its "
                 ".info and .part were removed", upload_id)
        return True

    async def _exists(self, key: str) -> bool:
        try:
            await self._call(self.client.head_object, Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise _storage_error(exc) from exc
        return True

    # -- capabilities ---------------------------------------------------------------------------------------------

    async def _terminate(self, upload: S3Upload) -> None:
        async def abort() -> None:
            try:
                await self._call(
                    self.client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=self.object_key(upload.object_id),
                    UploadId=upload.multipart_id,
                )
            except Exception as exc:
                if _error_code(exc) not in ("NoSuchUpload", "NoSuchKey", "404"):
                    raise

        async def delete() -> None:
            keys = [
                self.object_key(upload.object_id),
                self.tail_key(upload),
                self.info_key(upload),
            ]
            state = upload._state
            if self.readable_uploads or (state is not None and state.piece_objects):
                keys += [self.piece_key(upload.object_id, p.number) for p, _ in await self._list_piece_objects(
                    upload.object_id)]
            response = await self._call(
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
            failed = [e for e in response.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise errors.ERR_INTERNAL_SERVER_ERROR(f"S3 could not delete {failed[0].get('Key')}: {failed[0]}")

        try:
            await asyncio.gather(abort(), delete())
        except Exception as exc:
            raise _storage_error(exc) from exc

    async def _expire(self, upload: S3Upload) -> None:
        """Leave ``<id>.expired`` (the upload answers 410 from now on), then remove it as termination does: abort
        the multipart upload (its parts go with it) and delete the object, the tail and the ``.info``."""
        try:
            await self._call(
                self.client.put_object,
                Bucket=self.bucket,
                Key=self.expired_key(upload.object_id),
                Body=str(int(time.time())).encode(),
            )
        except Exception as exc:
            raise _storage_error(exc) from exc
        await self._terminate(upload)

    async def forget_expired(self, older_than: float) -> int:
        """Delete the ``.expired`` objects written before ``older_than`` (those uploads answer 404 then)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = await self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self.meta_key(""))))
            keys = [
                obj["Key"]
                for page in pages
                for obj in page.get("Contents", ())
                if obj["Key"].endswith(".expired") and obj["LastModified"].timestamp() < older_than
            ]
            for key in keys:
                await self._call(self.client.delete_object, Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise _storage_error(exc) from exc
        return len(keys)

    async def upload_ids(self) -> AsyncIterator[str]:
        """Every upload, from its ``.info`` object (whose ID names the multipart upload)."""
        prefix = self.meta_key("")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = await self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if not key.endswith(".info"):
                    continue
                try:
                    response = await self._call(self.client.get_object, Bucket=self.bucket, Key=key)
                    raw = await self._call(response["Body"].read)
                    yield UploadInfo.from_json(raw).id
                except Exception as exc:  # removed meanwhile, or not one of ours: skip it
                    log.warning("skipping %s: %s", key, exc)

    async def _concat(self, final: S3Upload, partials: Sequence[Upload]) -> None:
        own = [p for p in partials if isinstance(p, S3Upload) and p._store is self]
        sizes = [(await p.info()).offset for p in own]
        pieces: list[tuple[S3Upload, int, int, bool]] = []  # (partial, first byte, last byte, whole object)
        for partial, size in zip(own, sizes, strict=True):
            count = max(1, math.ceil(size / self.plan.max_size))
            step = max(1, math.ceil(size / count))
            pieces.extend((partial, first, min(size, first + step) - 1, count == 1) for first in range(0, size, step))
        copyable = (
            len(own) == len(partials)
            and all(size > 0 for size in sizes)
            and all(last - first + 1 >= self.plan.min_size for _, first, last, _ in pieces[:-1])
            and len(pieces) <= self.plan.max_pieces
        )
        if not copyable:
            await concat_by_streaming(final, partials)
            return
        state = await final.state()

        async def copy(number: int, partial: S3Upload, first: int, last: int, whole: bool) -> Part:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": self.object_key(final.object_id),
                "UploadId": final.multipart_id,
                "PartNumber": number,
                "CopySource": {"Bucket": self.bucket, "Key": self.object_key(partial.object_id)},
            }
            if not whole:
                kwargs["CopySourceRange"] = f"bytes={first}-{last}"
            assert self._part_slots is not None
            async with self._part_slots:
                response = await self._call(self.client.upload_part_copy, **kwargs)
            return Part(number, last - first + 1, str(response["CopyPartResult"]["ETag"]))

        if self._part_slots is None:
            self._part_slots = asyncio.Semaphore(self.concurrent_part_uploads)
        try:
            state.pieces = await gather_all(copy(n, *piece) for n, piece in enumerate(pieces, 1))
            if state.piece_objects:
                # The readable layout counts piece objects, not the multipart upload's parts: the copied parts are
                # the whole upload, so it is completed right away (finish then has nothing left to do).
                await self._complete(final, final.multipart_id, state.pieces)
                state.completed, state.completed_size = True, sum(p.size for p in state.pieces)
        except Exception as exc:
            final._state = None
            raise _storage_error(exc) from exc


def _log_call(operation: str, started: float, **details: Any) -> None:
    duration = round((time.perf_counter() - started) * 1000, 1)
    outcome = details.get("error") or details.get("status") or "done"
    log.info("S3 %s: %s in %.1f ms", operation, outcome, duration,
             extra=logs.fields(event="S3APICall", operation=operation, duration_ms=duration, **details))


_LOGGED_CLIENTS: weakref.WeakSet[Any] = weakref.WeakSet()  # the clients log_api_calls_of() hooked already


def log_api_calls_of(client: Any) -> None:
    """Log every API call ``client`` makes from now on, one line each when it is done (tusd's -s3-log-api-calls):
    the operation, how long it took (its retries included), the HTTP status or the error, and the object key and
    part number. Uses botocore's public event hooks; the lines go to the ``pytusd.s3`` logger at INFO, so they show
    with --verbose."""
    if client in _LOGGED_CLIENTS:
        return
    _LOGGED_CLIENTS.add(client)

    def start(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["pytusd_call"] = (model.name, time.perf_counter(), params.get("Key"), params.get("PartNumber"))

    def done(context: dict[str, Any], **details: Any) -> None:
        call = context.get("pytusd_call")
        if call is not None:
            operation, started, key, part = call
            _log_call(operation, started, **details, key=key, part=part)

    def after(parsed: Any, context: dict[str, Any], **_: Any) -> None:
        done(context, status=(parsed or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))

    def after_error(exception: Exception, context: dict[str, Any], **_: Any) -> None:
        done(context, error=errors.one_line(exception))

    events = client.meta.events
    events.register_first("before-parameter-build.s3", start)
    events.register_last("after-call.s3", after)
    events.register_last("after-call-error.s3", after_error)


def make_client(
    *,
    endpoint: str | None = None,
    region: str | None = None,
    disable_ssl: bool = False,
    max_pool_connections: int = 32,
    transfer_acceleration: bool = False,
) -> Any:
    """A boto3 S3 client with credentials and region from the standard AWS chain (environment, shared config and
    credentials files, instance metadata). A custom endpoint gets path-style addressing, as tusd does.
    ``transfer_acceleration``: use the bucket's S3 Transfer Acceleration endpoint (tusd's -s3-transfer-acceleration;
    the bucket must have it enabled).

    ``max_pool_connections`` must be at least the store's ``concurrent_part_uploads`` plus a few for metadata
    requests; with fewer, urllib3 opens and discards extra connections without a visible warning."""
    try:
        import boto3
        from botocore.config import Config as BotoConfig
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(extras.missing("the S3 store needs boto3", "s3")) from exc
    session = boto3.session.Session()
    s3_options: _S3Dict = {"addressing_style": "path"} if endpoint else {}
    if transfer_acceleration:
        if endpoint:
            raise ValueError("S3 transfer acceleration is AWS's own endpoint: it cannot be combined with a custom "
                             "endpoint (--s3-endpoint)")
        s3_options["use_accelerate_endpoint"] = True
    config = BotoConfig(
        s3=s3_options,
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": 5, "mode": "standard"},
        # CRC checksums on every request are AWS's newer default; not every S3 implementation accepts them, and the
        # part's Content-MD5/SHA-256 signature already protects the bytes.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=60,
        signature_version="s3v4",  # also for presigned part URLs, which would otherwise get the old SigV2
    )
    return session.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region or session.region_name or "us-east-1",
        use_ssl=not disable_ssl,
        config=config,
    )


__all__ = ["PartPlan", "S3Store", "S3Upload", "log_api_calls_of", "make_client"]
