"""Whole-upload digests (``--digest``): the SHA-256 (or SHA-512) of an upload's full content, computed while its
bytes arrive, without reading the data again.

The running hash (:mod:`pytusd.hashstate`) is fed by every request that writes (tus ``PATCH``, creation-with-upload,
the IETF draft; :meth:`pytusd.core.uploads.Uploads.write_body` is the one way bytes reach a store). After each write
its state is saved in the upload's info (``Storage["DigestState"]``, with the offset it covers), so the next request,
in this process or any other after a restart, resumes it. The write that completes the upload stores the digest
instead, as ``Storage["Repr-Digest"]`` (the RFC 9530 field value, e.g. ``sha-256=:<base64>:``), before the store
finishes the upload; post-finish hooks and events see it, and ``HEAD`` and ``GET`` send it as ``Repr-Digest``.

A state is trusted only for the offset it records. When a process died between storing bytes and saving the state,
or the store kept fewer bytes than were hashed, the next writer finds the state behind the stored offset and catches
up by reading back just the missing range, where the store can read an unfinished upload; elsewhere the range is
read when the upload finishes. A final upload made by concatenation (its bytes never stream through here) is read
once when it completes, and so is an upload that was begun before ``--digest`` was on. A complete upload left with a
state but no digest (its process died in between) gets it the next time it is loaded. Such reads hash in the
bulk-copy threads, never on the event loop.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from .. import errors, fileio, hashstate
from ..info import UploadInfo
from ..observe import logs
from ..stores import Upload, base

log = logging.getLogger("pytusd")

STATE_KEY = "DigestState"  # the running state, while the upload is unfinished
DIGEST_KEY = "Repr-Digest"  # the finished upload's digest, as the Repr-Digest field value
RESERVED_KEYS = (STATE_KEY, DIGEST_KEY)  # set only here: a hook's Storage changes never carry them in

# RFC 9530's names of the algorithms (the IANA Hash Algorithms for HTTP Digest Fields registry).
FIELD_NAMES = {"sha256": "sha-256", "sha512": "sha-512"}
ALGORITHMS = tuple(FIELD_NAMES)


def parse_algorithms(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"sha256"`` / ``"sha256,sha512"`` (or a sequence) -> the algorithms, known and runnable here; ValueError
    saying why not (an unknown name, or no OpenSSL digest functions in this Python)."""
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen: list[str] = []
    for name in (n.strip().lower().replace("-", "") for n in names):
        if not name:
            continue
        if name not in FIELD_NAMES:
            raise ValueError(f"unknown digest algorithm {name!r}: choose from {', '.join(ALGORITHMS)}")
        if name not in chosen:
            chosen.append(name)
    for name in chosen:
        try:
            hashstate.check_available(name)
        except hashstate.Unavailable as exc:
            raise ValueError(f"--digest {name} cannot run here: {exc}") from exc
    return tuple(chosen)


def header_value(info: UploadInfo) -> str | None:
    """The ``Repr-Digest`` to send for this upload: its stored digest once it is complete, else None."""
    if not info.is_complete:
        return None
    return info.storage.get(DIGEST_KEY) if info.storage else None


def without_reserved(info: UploadInfo) -> UploadInfo:
    """The info a new upload is created with: none of the keys only this module writes (a hook that sets Storage
    from client input could otherwise plant a digest)."""
    if not info.storage or not any(key in info.storage for key in RESERVED_KEYS):
        return info
    return info.replace(storage={k: v for k, v in info.storage.items() if k not in RESERVED_KEYS})


# While a body streams, its bytes are hashed in a file I/O thread a batch at a time (OpenSSL lets go of the GIL), so
# the event loop goes on receiving the next batch meanwhile (bench/NOTES.md, "Whole-upload digests").
BATCH = 1 << 20


class Running:
    """The hashes of one upload's bytes ``[0, offset)``, fed as a request's chunks stream to the store.

    :meth:`feed` hands the chunks on at once and hashes them behind, in order; :meth:`settle` waits until every
    chunk fed is hashed (``after_write`` does, before the state is read)."""

    __slots__ = ("offset", "hashes", "fed", "_batch", "_batched", "_job")

    def __init__(self, offset: int, hashes: list[hashstate.ResumableHash]) -> None:
        self.offset = offset  # the bytes the hashes covered before this request
        self.hashes = hashes
        self.fed = 0  # bytes handed on by this request (hashed once settled)
        self._batch: list[bytes] = []
        self._batched = 0
        self._job: fileio.Job[None] | None = None

    async def feed(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The chunks, passed on unchanged; each is hashed, in order, by the time :meth:`settle` returns."""
        async for chunk in chunks:
            self.fed += len(chunk)
            if type(chunk) is bytes:  # immutable: safe to hash in a thread while the store has it too
                self._batch.append(chunk)
                self._batched += len(chunk)
                if self._batched >= BATCH:
                    await self._dispatch()
            else:  # a buffer that may change later: hashed now, after what came before it
                await self.settle()
                _update_all(self.hashes, chunk)
            yield chunk

    async def _dispatch(self) -> None:
        batch = self._batch
        self._batch, self._batched = [], 0
        if self._job is not None:
            job, self._job = self._job, None
            await job.outcome()
        self._job = fileio.start(_update_each, self.hashes, batch)

    async def settle(self) -> None:
        """Wait until every chunk fed so far is hashed."""
        if self._job is not None:
            job, self._job = self._job, None
            await job.outcome()
        if self._batch:
            _update_each(self.hashes, self._batch)
            self._batch, self._batched = [], 0

    def state(self) -> str:
        saved: dict[str, object] = {"offset": self.offset + self.fed}
        for h in self.hashes:
            saved[h.name] = h.state()
        return json.dumps(saved, separators=(",", ":"))

    def field_value(self) -> str:
        return ", ".join(f"{FIELD_NAMES[h.name]}=:{base64.b64encode(h.digest()).decode('ascii')}:" for h in self.hashes)


class Digests:
    """``--digest``: what the write, finish and load paths call (see the module's docstring)."""

    def __init__(self, algorithms: tuple[str, ...], readable_while_incomplete: bool) -> None:
        self.algorithms = algorithms
        self.readable_while_incomplete = readable_while_incomplete

    def _saved(self, info: UploadInfo) -> tuple[int, list[hashstate.ResumableHash]] | None:
        """The saved state (the offset it covers, the hashes), when it is one of these algorithms."""
        raw = info.storage.get(STATE_KEY) if info.storage else None
        if not raw:
            return None
        try:
            saved = json.loads(raw)
            offset = saved["offset"]
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ValueError("no offset")
            return offset, [hashstate.ResumableHash.resume(name, str(saved[name])) for name in self.algorithms]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("upload %s: its saved digest state is unusable (%s); the digest starts over", info.id, exc)
            return None

    def _fresh(self) -> list[hashstate.ResumableHash]:
        return [hashstate.ResumableHash(name) for name in self.algorithms]

    async def _caught_up(
        self, upload: Upload, info: UploadInfo, saved: tuple[int, list[hashstate.ResumableHash]] | None, end: int
    ) -> Running | None:
        """The hashes of bytes ``[0, end)``: the saved state, when it stops at or before ``end``, with the rest
        read back; else all of it read. The hashing runs in the bulk-copy threads (a large final must not stall
        the event loop). None, logged, when the store returned other than the range asked for."""
        start, hashes = saved if saved is not None and saved[0] <= end else (0, self._fresh())
        if start == end:
            return Running(end, hashes)
        log.info("upload %s: catching the digest up from byte %d to %d", info.id, start, end,
                 extra=logs.fields(event="DigestCatchUp", upload_id=info.id, start=start, end=end))
        threads = fileio.copy_pool()
        received = 0
        async for block in upload.reader(start, end):
            received += len(block)
            await fileio.start(_update_all, hashes, block, threads=threads).outcome()
        if received != end - start:
            log.warning("upload %s: reading bytes %d to %d for its digest gave %d bytes; it gets no digest",
                        info.id, start, end, received)
            return None
        return Running(end, hashes)

    async def before_write(self, upload: Upload, info: UploadInfo) -> Running | None:
        """The running hashes at the stored offset, for the request about to write; None when they cannot be had
        without reading what cannot be read (the digest is then computed at finish)."""
        saved = self._saved(info)
        if saved is not None and saved[0] == info.offset:
            return Running(info.offset, saved[1])
        if info.offset == 0:
            return Running(0, self._fresh())
        if not self.readable_while_incomplete:
            return None
        # Behind the stored offset (a process died before saving, or a store kept less than was hashed), or an
        # upload begun before --digest: read back only what the saved state does not cover.
        try:
            return await self._caught_up(upload, info, saved, info.offset)
        except errors.TusError as exc:
            if not exc.is_(errors.ERR_INCOMPLETE_UPLOAD):
                raise
            return None  # this upload's bytes cannot be read before it is finished (a store's older layout)

    async def after_write(self, upload: Upload, info: UploadInfo, running: Running | None, written: int) -> UploadInfo:
        """Save the state after a write (``info`` is the upload after it), or, when the write completed the upload,
        its digest, before the store finishes it. When the store kept other than what was hashed, nothing is saved:
        the next writer catches up. A failure to save is logged, not raised (the bytes are stored): the next writer
        catches up, and a complete upload's :meth:`finish` tries again with the state in ``info``."""
        if running is None:
            return info
        await running.settle()
        if not written:
            return info
        if running.fed != written or running.offset + written != info.offset:
            log.info("upload %s: %d bytes hashed, %d stored; the next write catches the digest up",
                     info.id, running.fed, written)
            return info
        changes: dict[str, str | None]
        if info.is_complete:
            changes = {DIGEST_KEY: running.field_value(), STATE_KEY: None}
        else:
            changes = {STATE_KEY: running.state()}
        try:
            await base.annotatable(upload).annotate(changes)
        except Exception as exc:  # noqa: BLE001 - the bytes are stored: the digest catches up later
            log.warning("upload %s: the digest state could not be saved: %s", info.id, exc)
            return info.with_storage({STATE_KEY: running.state()}) if info.is_complete else info
        return info.with_storage(changes)

    @staticmethod
    def wants_repair(info: UploadInfo) -> bool:
        """A complete upload with a running state but no digest: its process died (or its storage failed) between
        the last byte and the digest. Uploads finished before ``--digest`` have neither and stay without."""
        storage = info.storage
        return info.is_complete and bool(storage) and STATE_KEY in storage and DIGEST_KEY not in storage

    async def finish(self, upload: Upload, info: UploadInfo) -> UploadInfo:
        """The finished upload's digest, stored in its info (``Storage["Repr-Digest"]``) unless it is there: from
        the running state when it covers every byte, else what it lacks read back (from byte 0 for a final, whose
        bytes never streamed through here). Never raises: an upload whose digest cannot be had is logged and goes
        on without one (its post-finish hooks still run)."""
        if info.storage and DIGEST_KEY in info.storage:
            return info
        try:
            running = await self._caught_up(upload, info, self._saved(info), info.size)
            if running is None:
                return info
            changes: dict[str, str | None] = {DIGEST_KEY: running.field_value(), STATE_KEY: None}
            await base.annotatable(upload).annotate(changes)
        except Exception as exc:  # noqa: BLE001 - the upload is complete; only its digest is missing
            log.warning("upload %s: its digest could not be stored: %s", info.id, exc,
                        extra=logs.fields(event="DigestFailed", upload_id=info.id))
            return info
        return info.with_storage(changes)


def _update_all(hashes: list[hashstate.ResumableHash], block: bytes) -> None:
    for h in hashes:
        h.update(block)


def _update_each(hashes: list[hashstate.ResumableHash], blocks: list[bytes]) -> None:
    for h in hashes:
        for block in blocks:
            h.update(block)
