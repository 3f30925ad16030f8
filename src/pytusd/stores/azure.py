"""AzureStore: uploads as Azure block blobs built from staged blocks, in the blob layout of tusd's azurestore.

For an upload with ID ``<id>`` the container holds

* ``<prefix><id>``: a block blob. A PATCH stages its bytes as blocks and ends by committing every block that
  counts (Put Block List), with the metadata ``pytusd_unfinished=1``: the blob holds the bytes stored so far and can
  be read. ``finish`` commits once more, with the Content-Type and access tier and without the mark. A marker block
  is staged when the upload is created, as tusd does (dropped by the first commit);
* ``<prefix><id>.info``: the upload info as tusd's FileInfo JSON;
* ``<prefix><id>.part``: the bytes after the last block while there is no room left for another short block (a
  pytusd addition, see below); its metadata records the offset it starts at;
* ``<prefix><id>.expired``: left for a while by an expired upload (410 rather than 404), the rest removed.

Nothing about an upload lives in the process: its offset is read from Get Block List (committed and uncommitted
blocks) on every request, so any pytusd process resumes any upload. A blob committed without the unfinished mark
and with no uncommitted blocks is finished; its offset is the blob's size. Blocks that a request staged but did not
commit still count: a request that fails commits them before it answers; after a process died, the next PATCH
commits them, and a reader that needs them commits them first (conditional on the blob's ETag as loaded).

Block IDs. Every block's ID says where it belongs: 12 bytes, the block's index (its number - 1) as a little-endian
uint32 followed by its first byte's offset in the upload as a little-endian uint64, base64 (16 characters, the same
length for all blocks as Azure requires). The offset is the sum of the blocks 1, 2, 3, ... where each block starts
exactly where the previous one ended; Azure's listing order is not relied on. A block whose upload failed leaves a
gap, and what was staged after it is ignored (and overwritten later); since the offset is part of the ID, a block
left over from an earlier failed request never counts where it does not fit, whatever its number. tusd's IDs are 4
bytes (the index alone) and its marker is index 0x7FFFFFFF; a blob whose blocks have 4-byte IDs is tusd's, and is
resumed, counted and committed in tusd's scheme (blocks contiguous by number), so a container written by tusd is
served as it is. tusd cannot resume an upload pytusd started or wrote to (it counts uncommitted blocks only, and
4-byte IDs); it serves finished ones.

The block operations go through the SDK's generated REST layer (``BlobClient._client.block_blob``): the public
``stage_block`` and ``commit_block_list`` treat a block ID as UTF-8 text and base64 it themselves, which cannot
express tusd's binary IDs (and ``get_block_list`` decodes them back to text where it can). Everything else uses the
public API.

A PATCH body is cut into blocks while it arrives (:mod:`.objects.engine`): each block is spooled to an
unnamed temporary file and staged from a thread, at most ``max_buffered_blocks`` spools exist per request and at
most ``concurrent_block_uploads`` blocks upload at once across the store, so memory stays flat. A blob holds at most
50,000 blocks of at most 4000 MiB: for a known length the block size is ``max(block_size, length / 50000)`` (and
grows further if the blocks left must hold more, after a length declared late); for a deferred length it doubles
every 1,000 blocks. The bytes left at the end of a PATCH become a short block while the remaining blocks can still
hold the rest of the upload (64 TiB for a deferred length), else they wait in the ``.part`` blob and start the next
PATCH's first block (tusd's #1247 for S3: many small PATCHes of a huge upload would otherwise run out of blocks).

Concatenation copies the partials' blobs into the final's blocks with Put Block From URL (the service reads a
source URL signed with a read-only SAS) and commits once; a service that answers it 501 (Azurite before 3.37) makes
the store stream the partials' bytes into the final instead, from then on.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import hashlib
import io
import logging
import os
import re
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .. import errors, extras
from ..info import UploadInfo, new_upload_id
from .base import Capabilities, Upload
from .objects.engine import PieceUpload, State, StoreNames, read_ahead, storage_error
from .objects.plan import PiecePlan
from .objects.spool import Blocking, concat_by_streaming, gather_all

try:
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
    from azure.storage.blob import (
        BlobClient,
        BlobSasPermissions,
        BlobServiceClient,
        ContentSettings,
        generate_blob_sas,
    )
    from azure.storage.blob._generated.models import (
        BlobHTTPHeaders,
        BlockLookupList,
        ModifiedAccessConditions,
        SourceModifiedAccessConditions,
    )
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(extras.missing("the Azure store needs azure-storage-blob", "azure")) from exc

log = logging.getLogger("pytusd.azure")

MIB = 1 << 20
TIB = 1 << 40
DEFAULT_BLOCK_SIZE = 16 * MIB
MAX_BLOCK_SIZE = 4000 * MIB  # Put Block, API version 2019-12-12 and later
MAX_BLOCKS = 50_000  # committed blocks per blob
MAX_BLOB_SIZE = MAX_BLOCKS * MAX_BLOCK_SIZE  # about 190.7 TiB
MAX_DEFERRED_SIZE = 64 * TIB  # what a deferred-length upload may grow to (see BlockPlan)
DEFERRED_DOUBLING = 1_000  # a deferred-length upload's block size doubles every this many blocks
READ_RANGE = 4 * MIB  # a download is fetched in ranges of this size, one ahead of the reader
TAIL_OFFSET_KEY = "pytusd_tail_offset"  # Azure metadata names must be C# identifiers: no hyphens
UNFINISHED_KEY = "pytusd_unfinished"  # metadata of a blob committed while its upload goes on
MARKER_INDEX = 0x7FFFFFFF  # tusd's sentinel block: staged at creation so that "no uncommitted blocks" means finished
BLOB_CLIENT_CACHE = 3 * 1024  # blob clients kept per store (three per upload)
ACCESS_TIERS = {"": None, "hot": "Hot", "cool": "Cool", "cold": "Cold", "archive": "Archive"}
CONTAINER_ACCESS_TYPES = {"": None, "private": None, "blob": "blob", "container": "container"}

_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def BlockPlan(  # noqa: N802 - the name the block plan had before it became a PiecePlan
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_block_size: int = MAX_BLOCK_SIZE,
    max_blocks: int = MAX_BLOCKS,
    max_blob_size: int = MAX_BLOB_SIZE,
    max_deferred_size: int = MAX_DEFERRED_SIZE,
) -> PiecePlan:
    """How an upload is cut into blocks: Azure's limits (no minimum block size).

    A deferred-length upload is limited to ``max_deferred_size``, well below what 50,000 blocks hold with the
    doubling sizes (about 150 TiB): the margin is what lets a PATCH end in a short block for a long time. A known
    length's blocks grow when the blocks left must hold more (a length declared after many blocks were used).
    """
    return PiecePlan(
        preferred_size=block_size,
        max_size=max_block_size,
        max_pieces=max_blocks,
        max_total=max_blob_size,
        max_deferred=max_deferred_size,
        doubling=DEFERRED_DOUBLING,
        grow_to_fit=True,
        limit_name="Azure block blobs",
        remaining_name="the blob's remaining blocks",
    )


# --- block IDs -----------------------------------------------------------------------------------------------------


def block_id(number: int, start: int | None) -> str:
    """The ID of block ``number`` starting at byte ``start``; ``start=None`` makes tusd's 4-byte ID."""
    raw = struct.pack("<I", number - 1) if start is None else struct.pack("<IQ", number - 1, start)
    return base64.b64encode(raw).decode("ascii")


def marker_id(tusd: bool = False) -> str:
    return base64.b64encode(struct.pack("<I", MARKER_INDEX) if tusd else struct.pack("<IQ", MARKER_INDEX, 0)).decode()


def parse_block_id(name: str) -> tuple[int, int | None] | None:
    """``(index, start)`` of a block ID (``start`` None for tusd's IDs), or None for an ID of neither scheme."""
    try:
        raw = base64.b64decode(name, validate=True)
    except ValueError:
        return None
    if len(raw) == 4:
        return struct.unpack("<I", raw)[0], None
    if len(raw) == 12:
        index, start = struct.unpack("<IQ", raw)
        return index, start
    return None


@dataclass(frozen=True)
class Block:
    number: int
    start: int  # the offset of its first byte in the upload
    size: int
    tusd: bool = False  # named in tusd's scheme (4-byte ID without the offset)

    @property
    def id(self) -> str:
        return block_id(self.number, None if self.tusd else self.start)


def chain(listed: list[tuple[int, int | None, int]]) -> list[Block]:
    """The blocks that hold the upload, from the staged ``(index, start, size)`` (markers removed): numbers 1, 2,
    3, ... each starting where the previous one ended. tusd's blocks (start None) chain by number alone."""
    found = {(index + 1, start): size for index, start, size in listed}
    tusd = any(start is None for _, start, _ in listed)
    blocks: list[Block] = []
    offset = 0
    while True:
        number = len(blocks) + 1
        size = found.get((number, None if tusd else offset))
        if size is None:
            return blocks
        blocks.append(Block(number, offset, size, tusd))
        offset += size


# --- state derived from Azure --------------------------------------------------------------------------------------


@dataclass
class _State(State[Block]):
    tusd: bool = False  # the blob's blocks use tusd's IDs: go on in its scheme
    blob_modified: float = 0.0  # the committed blob's Last-Modified (0: none committed)
    committed_size: int = 0  # bytes of the committed blob while the upload goes on (the first pieces)
    blob_etag: str | None = None  # the committed blob's ETag, None while nothing is committed
    tail_etag: str | None = None
    tail_modified: float = 0.0


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    if not code:
        response = getattr(exc, "response", None)
        code = getattr(response, "headers", {}).get("x-ms-error-code") if response is not None else None
    return str(getattr(code, "value", code) or "")  # the public API gives a StorageErrorCode enum


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, ResourceNotFoundError) or getattr(exc, "status_code", None) == 404


def _summary(exc: BaseException) -> str:
    if isinstance(exc, HttpResponseError):
        lines = str(exc.message or exc.reason or "").splitlines()  # the first line; the rest is request IDs
        return " ".join(filter(None, [_error_code(exc) or str(exc.status_code or ""), lines[0] if lines else ""]))
    return str(exc)


def _storage_error(exc: BaseException) -> errors.TusError:
    return storage_error(exc, "Azure", _summary)


# --- the upload ----------------------------------------------------------------------------------------------------


class AzureUpload(PieceUpload[Block, _State]):
    """One upload in an :class:`AzureStore`: pieces are blocks staged on the blob, the tail is ``.part``."""

    names = StoreNames("Azure", "block", "the .part blob", log, _summary)
    _store: AzureStore

    def __init__(self, store: AzureStore, upload_id: str, state: _State | None = None) -> None:
        super().__init__(store, upload_id, state, max_buffered=store.max_buffered_blocks)
        self.blob = store.blob_client(upload_id)
        self.info_blob = store.blob_client(upload_id + ".info")
        self.tail_blob = store.blob_client(upload_id + ".part")

    # -- the engine's backend (PieceUpload) -----------------------------------------------------------------------

    async def _put_piece(self, state: _State, number: int, start: int, spool: IO[bytes] | None, size: int) -> Block:
        return await self._store._stage_block(self, state.tusd, number, start, spool, size)

    async def _put_info(self, info: UploadInfo) -> None:
        await self._store._put_info(self, info)

    async def _before_pieces(self, state: _State) -> None:
        if state.completed:
            raise errors.ERR_UPLOAD_SIZE_EXCEEDED("the upload is finished")

    def _check_length(self, state: _State, length: int) -> None:
        self.plan.check_fits(length, len(state.pieces) + 1, state.offset)

    async def _commit(self, state: _State, pieces: list[Block]) -> None:
        size = sum(b.size for b in pieces)
        if not state.info.size_is_deferred and size != state.info.size:
            raise errors.ERR_INTERNAL_SERVER_ERROR(f"the blocks hold {size} bytes, the upload {state.info.size}")
        await self._store._commit(self, pieces, state.info)

    async def write(self, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """The engine's write; when it fails after some blocks were staged (a block or the commit failed), the
        blocks that count are committed still, under this request's lock, so that readers need no commit of their
        own. Skipped when the storage cannot be reached: the next request commits them."""
        try:
            return await super().write(offset, chunks)
        except errors.TusError as exc:
            if exc.status >= 500 and not exc.is_(errors.ERR_STORAGE_UNAVAILABLE):  # a storage call failed
                await self._commit_leftovers()
            raise

    async def _commit_leftovers(self) -> None:
        try:
            self._state = None
            state = await self.state()
            if not state.completed and state.pieces_size > state.committed_size:
                await self._store._commit_progress(self, state, lazily=True)
        except Exception as exc:  # the request fails anyway; the next one or a reader commits them
            log.warning("upload %s: could not commit the blocks stored before the failure: %s", self.id, exc)
            self._state = None

    async def _pieces_stored(self, state: _State) -> None:
        if state.pieces_size > state.committed_size:  # new blocks (or ones left by a request that failed)
            await self._store._commit_progress(self, state)

    async def _put_tail(self, spool: IO[bytes], starts_at: int) -> None:
        etag, modified = await self._store._put_tail(self, spool, starts_at)
        if self._state is not None:  # a reader of this request reads this version of it
            self._state.tail_etag, self._state.tail_modified = etag, modified

    def _tail_bytes(self, size: int) -> AsyncIterator[bytes]:
        return self._store._read(self.tail_blob, 0, size)

    async def _delete_tail(self) -> None:
        await self._store._delete_quietly(self.tail_blob)

    # -- reading ----------------------------------------------------------------------------------------------------

    async def prepare_read(self) -> None:
        """Commit the blocks that count but are not committed yet (left by a request that failed), so that they can
        be read. Called under the upload's lock (GET): a commit drops every uncommitted block it does not name, so
        one made without the lock could drop the blocks a PATCH is staging and fail that PATCH's commit."""
        state = await self.state()
        if not state.completed and state.pieces_size > state.committed_size:
            try:
                await self._store._commit_progress(self, state, lazily=True)
            except Exception as exc:
                raise _storage_error(exc) from exc

    async def stored_reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """A finished upload's bytes from its blob; an unfinished one's from the committed blob, then from
        ``.part``. Blocks that count but are not committed yet are committed first (:meth:`prepare_read`): a caller
        that streams after letting go of the upload's lock prepares the read before it does."""
        state = await self.state()
        stop = state.offset if end is None else min(end, state.offset)
        if start >= stop:
            return
        store = self._store
        try:
            if state.completed:
                async for block in store._read(self.blob, start, stop):
                    yield block
                return
            pieces_end = state.pieces_size
            if min(stop, pieces_end) > state.committed_size:
                await self.prepare_read()
            position = start
            if position < pieces_end:
                async for block in store._read(self.blob, position, min(stop, pieces_end)):
                    position += len(block)
                    yield block
            if position < stop:
                try:
                    async for block in store._read(self.tail_blob, position - pieces_end, stop - pieces_end,
                                                   state.tail_etag):
                        position += len(block)
                        yield block
                except Exception as exc:
                    if not (_is_missing(exc) or getattr(exc, "status_code", None) == 412):
                        raise
                    # The .part blob changed under the reader: a request went on meanwhile and committed its
                    # bytes before it removed or replaced the .part. They are in the blob now.
                    async for block in store._read(self.blob, position, stop):
                        position += len(block)
                        yield block
        except Exception as exc:
            if _is_missing(exc) and state.completed:
                raise errors.ERR_INCOMPLETE_UPLOAD() from exc
            raise _storage_error(exc) from exc

    async def expire(self) -> None:
        await self._store._expire(self)

    async def concat(self, partials: Sequence[Upload]) -> None:
        await self._store._concat(self, partials)

    async def modified_time(self) -> float:
        """When the upload last changed: a finished one's blob; else the newest of ``.info``, the committed blob
        (every request commits what it stored) and ``.part``. Uncommitted blocks carry no time."""
        state = await self.state()
        if state.completed:
            return state.blob_modified
        return max(state.info_modified, state.blob_modified, state.tail_modified)

    # -- capabilities (AzureStore.capabilities) -------------------------------------------------------------------


# --- the store -----------------------------------------------------------------------------------------------------


class AzureStore:
    """Stores uploads in an Azure Blob Storage container (or Azurite).

    ``service`` is a sync :class:`azure.storage.blob.BlobServiceClient` (see :meth:`from_options`); its calls run
    in thread pools. The container is created on first use when it is missing (``container_access_type``: '' for
    private, 'blob' or 'container'). ``blob_access_tier`` ('' for the account's default, 'hot', 'cool', 'cold',
    'archive') is set by the finishing commit, the ``filetype`` metadata as Content-Type by every commit.
    Capabilities: termination, creation-defer-length, concatenation (Put Block From URL, else streamed), checksum
    (:meth:`PieceUpload.write_verified`), expiration, GET of unfinished uploads (prepared by committing blocks a
    failed request left), annotations (the info).
    """

    # An unfinished upload is read from the blocks committed so far and .part (readable_while_incomplete).
    capabilities = Capabilities(
        terminate=True, declare_length=True, concat=True, write_verified=True, expire=True, modified_time=True,
        annotate=True, prepare_read=True,
    )

    def __init__(
        self,
        container: str,
        service: BlobServiceClient,
        *,
        object_prefix: str = "",
        container_access_type: str = "",
        blob_access_tier: str = "",
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_buffered_blocks: int = 8,
        concurrent_block_uploads: int = 16,
        temp_dir: str | None = None,
    ) -> None:
        if not container:
            raise ValueError("the Azure store needs a container name")
        if container_access_type.lower() not in CONTAINER_ACCESS_TYPES:
            raise ValueError(f"container access type must be '', 'blob' or 'container', not {container_access_type!r}")
        if blob_access_tier.lower() not in ACCESS_TIERS:
            raise ValueError(
                f"blob access tier must be '', 'hot', 'cool', 'cold' or 'archive', not {blob_access_tier!r}"
            )
        if not 0 < block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"the block size must be between 1 byte and {MAX_BLOCK_SIZE} bytes")
        self.container = container
        self.service = service
        self.object_prefix = object_prefix
        self.container_access_type = CONTAINER_ACCESS_TYPES[container_access_type.lower()]
        self.blob_access_tier = ACCESS_TIERS[blob_access_tier.lower()]
        self.plan = BlockPlan(block_size=block_size)
        self.max_buffered_blocks = max(1, max_buffered_blocks)
        self.concurrent_block_uploads = max(1, concurrent_block_uploads)
        self.temp_dir = temp_dir
        self._container = service.get_container_client(container)
        # Block uploads and everything else run in separate thread pools, so that a HEAD never queues behind blocks.
        self._call = Blocking(16, "pytusd-azure")
        self._send = Blocking(self.concurrent_block_uploads, "pytusd-azure-block")
        self._block_slots: asyncio.Semaphore | None = None
        self._container_ready = False
        self._blob_clients: dict[str, BlobClient] = {}
        # Put Block From URL: None until tried, False once the service answered 501 (Azurite before 3.37).
        self.copy_from_url: bool | None = None

    def __repr__(self) -> str:
        return f"AzureStore({self.container!r}, prefix={self.object_prefix!r}, endpoint={self.service.url!r})"

    @classmethod
    def from_options(
        cls,
        container: str,
        *,
        object_prefix: str = "",
        endpoint: str = "",
        container_access_type: str = "",
        blob_access_tier: str = "",
        **options: Any,
    ) -> AzureStore:
        """A store with credentials from the environment, as tusd reads them: ``AZURE_STORAGE_CONNECTION_STRING``,
        or ``AZURE_STORAGE_ACCOUNT`` and ``AZURE_STORAGE_KEY`` with ``endpoint`` (default
        ``https://<account>.blob.core.windows.net``; for Azurite ``http://127.0.0.1:10000/devstoreaccount1``).
        A connection string names its own endpoint; ``endpoint`` then is ignored. ``options`` go to the store."""
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
        account = os.environ.get("AZURE_STORAGE_ACCOUNT", "")
        key = os.environ.get("AZURE_STORAGE_KEY", "")
        client_options = _client_options(int(options.get("concurrent_block_uploads", 16)) + 16)
        if connection_string:
            if endpoint:
                log.warning("the Azure endpoint %s is ignored: the connection string names its own", endpoint)
            service = BlobServiceClient.from_connection_string(connection_string, **client_options)
        elif account and key:
            url = endpoint.rstrip("/") or f"https://{account}.blob.core.windows.net"
            service = BlobServiceClient(url, credential={"account_name": account, "account_key": key}, **client_options)
        else:
            raise ValueError(
                "the Azure store needs credentials: set AZURE_STORAGE_CONNECTION_STRING, "
                "or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"
            )
        return cls(
            container,
            service,
            object_prefix=object_prefix,
            container_access_type=container_access_type,
            blob_access_tier=blob_access_tier,
            **options,
        )

    # -- names ----------------------------------------------------------------------------------------------------

    def blob_name(self, name: str) -> str:
        prefix = self.object_prefix
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return prefix + name

    def blob_client(self, name: str) -> BlobClient:
        """A client for one blob. Making one costs about half a millisecond (the SDK builds its REST layer each
        time), so recent ones are kept; they hold no state about the upload."""
        client = self._blob_clients.pop(name, None)
        if client is None:
            client = self._container.get_blob_client(self.blob_name(name))
            if len(self._blob_clients) >= BLOB_CLIENT_CACHE:
                del self._blob_clients[next(iter(self._blob_clients))]
        self._blob_clients[name] = client  # most recently used last
        return client

    # -- plumbing -------------------------------------------------------------------------------------------------

    async def _ensure_container(self) -> None:
        if self._container_ready:
            return
        try:
            await self._call(self._container.create_container, public_access=self.container_access_type)
            log.info("created Azure container %s", self.container)
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 403:
                raise _storage_error(exc) from exc
            # Credentials scoped to the container (a SAS) may not create it; if it is missing, the next call says so.
            log.warning("could not make sure the container %s exists: %s", self.container, _error_code(exc))
        except Exception as exc:  # cannot be reached: 503 ERR_STORAGE_UNAVAILABLE; tried again at the next create
            raise _storage_error(exc) from exc
        self._container_ready = True

    async def _stage_block(
        self, upload: AzureUpload, tusd: bool, number: int, start: int, spool: IO[bytes] | None, size: int
    ) -> Block:
        if number > self.plan.max_pieces or size > self.plan.max_size:
            raise errors.ERR_MAX_SIZE_EXCEEDED(f"an Azure blob holds at most {self.plan.max_pieces} blocks")
        if spool is None or size == 0:
            raise errors.ERR_INTERNAL_SERVER_ERROR("Azure refuses empty blocks")
        block = Block(number, start, size, tusd)
        if self._block_slots is None:
            self._block_slots = asyncio.Semaphore(self.concurrent_block_uploads)
        async with self._block_slots:
            await self._send(_put_block, upload.blob, block.id, spool, size)
        return block

    async def _commit(self, upload: AzureUpload, blocks: list[Block], info: UploadInfo) -> None:
        """The finishing commit: the blocks (committed before or not) become the blob, with its Content-Type and
        access tier and without the unfinished mark (a Put Block List replaces the blob's metadata)."""
        await self._call(
            upload.blob._client.block_blob.commit_block_list,
            blocks=BlockLookupList(latest=[b.id for b in blocks]),
            tier=self.blob_access_tier,
            blob_http_headers=_content_headers(info),
        )

    async def _commit_progress(self, upload: AzureUpload, state: _State, lazily: bool = False) -> None:
        """Commit the blocks that count so far, marked unfinished: the blob then holds the bytes stored so far and
        can be read. Uncommitted blocks not among them (staged after a gap, the marker) are dropped by Azure.
        ``lazily``: a reader found blocks a failed request left uncommitted; the commit is conditional on the blob
        being as loaded, and losing to another commit is fine (that one holds at least these blocks)."""
        conditions = None
        if lazily:
            conditions = (
                ModifiedAccessConditions(if_match=state.blob_etag)
                if state.blob_etag
                else ModifiedAccessConditions(if_none_match="*")
            )
        try:
            headers = await self._call(
                upload.blob._client.block_blob.commit_block_list,
                blocks=BlockLookupList(latest=[b.id for b in state.pieces]),
                blob_http_headers=_content_headers(state.info),
                headers={f"x-ms-meta-{UNFINISHED_KEY}": "1"},
                modified_access_conditions=conditions,
                cls=lambda _response, _body, headers: headers,
            )
        except HttpResponseError as exc:
            if lazily and exc.status_code in (409, 412):  # another commit came first: it holds these blocks
                state.committed_size = state.pieces_size
                return
            raise
        state.committed_size = state.pieces_size
        state.blob_etag = headers.get("ETag")
        modified = headers.get("Last-Modified")
        if modified is not None:
            state.blob_modified = modified.timestamp()

    async def _put_tail(self, upload: AzureUpload, spool: IO[bytes], starts_at: int) -> tuple[str | None, float]:
        def put() -> tuple[str | None, float]:
            size = spool.seek(0, os.SEEK_END)
            spool.seek(0)
            written = upload.tail_blob.upload_blob(
                spool,
                length=size,
                overwrite=True,
                metadata={TAIL_OFFSET_KEY: str(starts_at)},
                max_concurrency=1,
                validate_content=True,  # the SDK sends its MD5 (per request when it splits the upload)
            )
            etag, modified = written.get("etag"), written.get("last_modified")
            return (str(etag) if etag else None), (modified.timestamp() if modified is not None else time.time())

        return await self._call(put)

    async def _put_info(self, upload: AzureUpload, info: UploadInfo) -> None:
        await self._call(
            upload.info_blob.upload_blob,
            info.to_json(),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )

    async def _delete_quietly(self, blob: BlobClient) -> None:
        try:
            await self._call(blob.delete_blob)
        except Exception as exc:  # a stale .part is ignored anyway; removing it is housekeeping
            if not _is_missing(exc):
                log.warning("could not delete %s: %s", blob.blob_name, exc)

    def _read(self, blob: BlobClient, start: int, end: int, etag: str | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes ``start`` up to ``end`` of a blob, in ranges of ``READ_RANGE``, one ahead of the reader (the SDK
        would hold its first 32 MiB in memory); with ``etag``, only of that version of the blob (else 412)."""
        condition: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}

        def fetch(first: int, stop: int) -> bytes:
            downloader = blob.download_blob(offset=first, length=stop - first, max_concurrency=1, **condition)
            data: bytes = downloader.readall()
            if len(data) != stop - first:
                raise errors.ERR_INTERNAL_SERVER_ERROR(f"{blob.blob_name} is shorter than expected")
            return data

        return read_ahead(functools.partial(self._call, fetch), start, end, READ_RANGE)

    # -- reading the state ----------------------------------------------------------------------------------------

    async def _load(self, upload: AzureUpload) -> _State:
        def read_info() -> tuple[bytes, float] | None:
            try:
                downloader = upload.info_blob.download_blob()
                return downloader.readall(), downloader.properties.last_modified.timestamp()
            except Exception as exc:
                if _is_missing(exc):
                    return None
                raise

        def list_blocks() -> Any:
            try:
                return upload.blob._client.block_blob.get_block_list(list_type="all")
            except Exception as exc:
                if _is_missing(exc):  # neither committed nor staged blocks: a new upload (or blocks expired)
                    return None
                raise

        def head_blob() -> Any:
            try:
                return upload.blob.get_blob_properties()
            except Exception as exc:
                if _is_missing(exc):  # nothing committed (yet)
                    return None
                raise

        def head_tail() -> Any:
            try:
                return upload.tail_blob.get_blob_properties()
            except Exception as exc:
                if _is_missing(exc):
                    return None
                raise

        async def the_blob() -> tuple[Any, Any]:
            listing, properties = await asyncio.gather(self._call(list_blocks), self._call(head_blob))
            return listing, properties

        raw_info, (listing, blob), tail = await upload._gather(
            self._call(read_info), the_blob(), self._call(head_tail)
        )
        if raw_info is None and await self._expired(upload):
            raise errors.ERR_UPLOAD_EXPIRED()
        info, modified = upload._parse_info(raw_info)
        state = _State(info=info, info_modified=modified)
        committed = (listing.committed_blocks or []) if listing is not None else []
        staged = (listing.uncommitted_blocks or []) if listing is not None else []
        if blob is not None:
            state.blob_modified = blob.last_modified.timestamp()
            if UNFINISHED_KEY not in (blob.metadata or {}) and not staged:  # committed by finish
                state.completed = True
                state.completed_size = int(blob.size)
                state.stale_tail = tail is not None and bool(tail.size)
                return state
            state.committed_size = int(blob.size)
            state.blob_etag = blob.etag
        listed: list[tuple[int, int | None, int]] = []
        for block in [*staged, *committed]:  # committed last: where an ID is in both, the committed block counts
            parsed = parse_block_id(block.name)
            if parsed is None:
                log.warning("upload %s: ignoring a block with a foreign ID %r", upload.id, block.name)
                continue
            state.tusd = parsed[1] is None
            if parsed[0] != MARKER_INDEX:
                listed.append((parsed[0], parsed[1], int(block.size)))
        state.pieces = chain(listed)
        state.next_number = len(state.pieces) + 1
        if tail is not None:
            starts_at = (tail.metadata or {}).get(TAIL_OFFSET_KEY, "")
            state.adopt_tail(int(tail.size), int(starts_at) if starts_at.isdigit() else None)
            if state.tail_size:
                state.tail_etag = tail.etag
                state.tail_modified = tail.last_modified.timestamp()
        return state

    # -- DataStore ------------------------------------------------------------------------------------------------

    async def create(self, info: UploadInfo) -> AzureUpload:
        if not info.size_is_deferred:
            self.plan.check_length(info.size)
        await self._ensure_container()
        chosen = bool(info.id)
        upload = AzureUpload(self, info.id or new_upload_id())
        info = info.replace(
            id=upload.id,
            offset=0,
            storage={"Type": "azurestore", "Container": self.container, "Key": self.blob_name(upload.id)},
        )
        try:
            if chosen:  # an ID chosen by a hook may have been used before: drop its blocks and its .part
                await asyncio.gather(self._remove_blob(upload), self._delete(upload.tail_blob))
            await asyncio.gather(
                self._put_info(upload, info), self._send(_put_block, upload.blob, marker_id(), None, 0)
            )
        except Exception as exc:
            raise _storage_error(exc) from exc
        upload._state = _State(info=info)
        return upload

    async def get(self, upload_id: str) -> AzureUpload:
        if not upload_id:
            raise errors.ERR_UPLOAD_NOT_FOUND()
        upload = AzureUpload(self, upload_id)
        await upload.state()
        return upload

    async def _discard_staged(self, upload: AzureUpload) -> None:
        """Drop the uncommitted blocks of the upload's blob (committing an empty list does that; nothing else can)."""
        try:
            listing = await self._call(upload.blob._client.block_blob.get_block_list, list_type="uncommitted")
        except Exception as exc:
            if _is_missing(exc):
                return
            raise
        if listing.uncommitted_blocks:
            await self._call(upload.blob._client.block_blob.commit_block_list, blocks=BlockLookupList(uncommitted=[]))

    # -- capabilities ---------------------------------------------------------------------------------------------

    async def _delete(self, blob: BlobClient) -> None:
        try:
            await self._call(blob.delete_blob, delete_snapshots="include")
        except Exception as exc:
            if not _is_missing(exc):
                raise

    async def _remove_blob(self, upload: AzureUpload) -> None:
        """The upload's blob with every block of it, committed and uncommitted (a blob that holds only
        uncommitted blocks cannot be deleted on Azure: committing an empty list first makes it one that can)."""
        await self._discard_staged(upload)
        await self._delete(upload.blob)

    async def _terminate(self, upload: AzureUpload) -> None:
        try:
            await self._delete(upload.info_blob)  # first: from here on the upload does not exist
            await asyncio.gather(self._remove_blob(upload), self._delete(upload.tail_blob))
        except Exception as exc:
            raise _storage_error(exc) from exc
        upload._state = None

    def expired_blob(self, upload_id: str) -> BlobClient:
        """What an expired upload leaves (a few bytes), so that it answers 410 for a while."""
        return self.blob_client(upload_id + ".expired")

    async def _expired(self, upload: AzureUpload) -> bool:
        try:
            await self._call(self.expired_blob(upload.id).get_blob_properties)
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise _storage_error(exc) from exc
        return True

    async def _expire(self, upload: AzureUpload) -> None:
        """Leave ``<id>.expired`` (the upload answers 410 from now on), then remove the upload as termination does:
        ``.info``, the blob with its committed and uncommitted blocks, ``.part``."""
        try:
            await self._call(self.expired_blob(upload.id).upload_blob, str(int(time.time())).encode(), overwrite=True)
        except Exception as exc:
            raise _storage_error(exc) from exc
        await self._terminate(upload)

    async def forget_expired(self, older_than: float) -> int:
        """Delete the ``.expired`` blobs written before ``older_than`` (those uploads answer 404 then)."""
        prefix = self.blob_name("")

        def old() -> list[str]:
            return [
                str(b.name)[len(prefix) :]
                for b in self._container.list_blobs(name_starts_with=prefix or None)
                if str(b.name).endswith(".expired") and b.last_modified.timestamp() < older_than
            ]

        try:
            names = await self._call(old)
            await asyncio.gather(*(self._delete(self.blob_client(name)) for name in names))
        except Exception as exc:
            if _is_missing(exc):  # no container yet
                return 0
            raise _storage_error(exc) from exc
        return len(names)

    # -- concatenation ----------------------------------------------------------------------------------------------

    async def _concat(self, final: AzureUpload, partials: Sequence[Upload]) -> None:
        """The final upload's blob made of the partials' bytes: by Put Block From URL (Azure copies the ranges
        itself) where the service has it and the partials are committed blobs of this account, else by reading
        the partials and staging their bytes as a PATCH would (:func:`concat_by_streaming`). Which one is chosen
        at run time: the first Put Block From URL that is answered 501 switches this store to streaming for good.
        Both are repeatable: nothing counts before the one commit at the end (from URLs) or each write commits
        what it stored and a retry goes on from the final's offset (streaming)."""
        if (await final.state()).completed:
            return  # concatenated (and finished) before
        if self.copy_from_url is not False:
            sources = await self._copy_sources(partials)
            if sources is not None:
                try:
                    await self._concat_from_urls(final, sources)
                    return
                except _CopyNotImplemented:
                    self.copy_from_url = False
                    log.info("Azure answers Put Block From URL with 501: concatenating by streaming from now on")
                except _CopyRefused as exc:
                    log.warning("final upload %s: Put Block From URL refused (%s); streaming the partials instead",
                                final.id, _summary(exc.__cause__ or exc))
        await concat_by_streaming(final, partials)

    async def _copy_sources(self, partials: Sequence[Upload]) -> list[_Source] | None:
        """The partials as blobs to copy from, or None when one of them cannot be (another store or account, or
        bytes not all committed: a .part, blocks left uncommitted by a failed request)."""
        sources: list[_Source] = []
        for partial in partials:
            if not (
                isinstance(partial, AzureUpload)
                and partial._store.service.url == self.service.url
                and partial._store.container == self.container
                and self._source_url(partial.blob) is not None
            ):
                return None
            state = await partial.state()
            if state.completed:
                sources.append(_Source(partial.blob, state.completed_size, None))
            elif state.offset == state.committed_size:
                sources.append(_Source(partial.blob, state.committed_size, state.blob_etag))
            else:
                return None
        return sources

    def _source_url(self, blob: BlobClient) -> str | None:
        """The blob's URL as Azure can read it for Put Block From URL: with a read-only SAS for an hour signed by
        the account key, or the SAS the client was given; None with other credentials (then streaming)."""
        credential = self.service.credential  # the SDK's shared-key policy holds the account's name and key
        account, key = getattr(credential, "account_name", None), getattr(credential, "account_key", None)
        if isinstance(account, str) and isinstance(key, str):
            sas = generate_blob_sas(
                account,
                self.container,
                blob.blob_name,
                account_key=key,
                permission=BlobSasPermissions(read=True),
                expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
            )
            return f"{blob.url}?{sas}"
        url = str(blob.url)
        return url if "sig=" in url else None

    async def _concat_from_urls(self, final: AzureUpload, sources: list[_Source]) -> None:
        state = await final.state()
        if state.completed:
            return  # concatenated before
        step = self.plan.max_size
        planned: list[tuple[Block, _Source, int]] = []  # (block, where its bytes come from, the first of them)
        offset = 0
        for source in sources:
            for first in range(0, source.size, step):
                length = min(step, source.size - first)
                planned.append((Block(len(planned) + 1, offset, length), source, first))
                offset += length
        if offset != state.info.size:
            raise errors.ERR_INTERNAL_SERVER_ERROR(f"the partials hold {offset} bytes, the final {state.info.size}")
        if len(planned) > self.plan.max_pieces:
            raise errors.ERR_MAX_SIZE_EXCEEDED(f"an Azure blob holds at most {self.plan.max_pieces} blocks")

        async def copy(block: Block, source: _Source, first: int) -> None:
            if self._block_slots is None:
                self._block_slots = asyncio.Semaphore(self.concurrent_block_uploads)
            url = self._source_url(source.blob)  # signed for each block: a long copy outlives no SAS
            assert url is not None, "checked by _copy_sources"
            async with self._block_slots:
                try:
                    await self._send(
                        final.blob._client.block_blob.stage_block_from_url,
                        block_id=block.id,
                        content_length=0,
                        source_url=url,
                        source_range=f"bytes={first}-{first + block.size - 1}",
                        source_modified_access_conditions=SourceModifiedAccessConditions(source_if_match=source.etag)
                        if source.etag
                        else None,
                    )
                except HttpResponseError as exc:
                    if exc.status_code == 501 or _error_code(exc) == "NotImplemented":
                        raise _CopyNotImplemented() from exc
                    raise

        try:
            if planned:  # the first block alone: a copy the service refuses costs one request
                try:
                    await copy(*planned[0])
                except HttpResponseError as exc:  # 403 (Azure cannot read the source), ...: not this way
                    raise _CopyRefused() from exc
                self.copy_from_url = True
                await gather_all([copy(*p) for p in planned[1:]])
            blocks = [p[0] for p in planned]
            await self._commit(final, blocks, state.info)
        except (_CopyNotImplemented, _CopyRefused):
            final._state = None
            raise
        except Exception as exc:
            final._state = None
            raise _storage_error(exc) from exc
        state.pieces, state.completed, state.completed_size = blocks, True, offset

    async def upload_ids(self) -> AsyncIterator[str]:
        """Every upload, from the names of the ``.info`` blobs."""
        prefix = self.blob_name("")

        def names() -> list[str]:
            return [b.name for b in self._container.list_blobs(name_starts_with=prefix or None)]

        try:
            listed = await self._call(names)
        except Exception as exc:
            if _is_missing(exc):  # no container yet: no uploads
                return
            raise _storage_error(exc) from exc
        for name in listed:
            if name.endswith(".info") and len(name) > len(prefix) + len(".info"):
                yield name[len(prefix) : -len(".info")]


@dataclass(frozen=True)
class _Source:
    """A partial's bytes for Put Block From URL: its committed blob, in the version that was loaded."""

    blob: BlobClient
    size: int
    etag: str | None


class _CopyNotImplemented(Exception):
    """The service answered Put Block From URL with 501."""


class _CopyRefused(Exception):
    """The service answered the first Put Block From URL of a concatenation with another error."""


def _content_headers(info: UploadInfo) -> BlobHTTPHeaders | None:
    """The blob's Content-Type: the upload's ``filetype`` metadata when it is printable ASCII."""
    filetype = info.metadata.get("filetype", "")
    return BlobHTTPHeaders(blob_content_type=filetype) if _PRINTABLE.fullmatch(filetype) else None


def _md5_of(spool: IO[bytes], size: int) -> bytes:
    """The MD5 of a block's ``size`` bytes, read back from its spool (a local file, in the page cache)."""
    digest = hashlib.md5(usedforsecurity=False)
    spool.seek(0)
    left = size
    while left > 0:
        chunk = spool.read(min(MIB, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.digest()


def _put_block(blob: BlobClient, name: str, spool: IO[bytes] | None, size: int) -> None:
    """Put Block with the ID exactly as given (see the module docstring) and the block's MD5 as its transactional
    Content-MD5, so that Azure refuses a block whose bytes were damaged on the way (400 Md5Mismatch). A None spool
    stages the marker block, one byte: Azure refuses empty blocks (tusd #1358)."""
    if spool is None:
        body: IO[bytes] = io.BytesIO(b"\0")
        size = 1
        md5 = hashlib.md5(b"\0", usedforsecurity=False).digest()
    else:
        md5 = _md5_of(spool, size)
        spool.seek(0)
        body = spool
    blob._client.block_blob.stage_block(block_id=name, content_length=size, body=body, transactional_content_md5=md5)


def _client_options(pool_size: int) -> dict[str, Any]:
    """A connection pool as large as the store's concurrency (requests' default of 10 would open and drop
    connections under load), and retries like tusd's (5, short delays) instead of the SDK's minutes of backoff."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import ExponentialRetry
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=4, pool_maxsize=pool_size, max_retries=Retry(total=False, redirect=False, raise_on_status=False)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return {
        "transport": RequestsTransport(session=session, connection_timeout=20, read_timeout=60),
        # azure-storage-blob annotates initial_backoff as int; it is only added to, so a float is fine.
        "retry_policy": ExponentialRetry(initial_backoff=0.2, increment_base=2, retry_total=5),  # type: ignore[arg-type]
    }


__all__ = ["AzureStore", "AzureUpload", "Block", "BlockPlan", "block_id", "chain", "parse_block_id"]
