"""Whole-upload digests (``--digest``): the SHA-256 (or SHA-512) of an upload's full content, computed while its
bytes arrive, with no second read of the data.

The running hash (:mod:`pytusd.hashstate`) is fed by every request that writes (tus ``PATCH``, creation-with-upload,
the IETF draft; :meth:`pytusd.core.uploads.Uploads.write_body` is the one way bytes reach a store). After each write
its state is saved in the upload's info (``Storage["DigestState"]``, with the offset it covers), so the next request,
in this process or any other after a restart, resumes it. When the upload finishes, the digest goes into the info as
``Storage["Repr-Digest"]`` (the RFC 9530 field value, e.g. ``sha-256=:<base64>:``), where post-finish hooks and
events see it, and ``HEAD`` and ``GET`` send it as ``Repr-Digest``.

A state is trusted only for the offset it records. When a process died between storing bytes and saving the state,
or the store kept fewer bytes than were hashed, the next writer finds the state behind the stored offset and catches
up by reading just the missing range back (every store but S3's default layout can read an unfinished upload); where
that cannot be read, or for a final upload made by concatenation (its bytes never stream through), the digest is
computed at finish by reading the finished upload once.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from .. import hashstate
from ..info import UploadInfo
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


class Running:
    """The hashes of one upload's bytes ``[0, offset)``, fed as a request's chunks stream to the store."""

    __slots__ = ("offset", "hashes", "fed")

    def __init__(self, offset: int, hashes: list[hashstate.ResumableHash]) -> None:
        self.offset = offset  # the bytes the hashes covered before this request
        self.hashes = hashes
        self.fed = 0  # bytes hashed by this request

    async def feed(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The chunks, passed on unchanged once hashed."""
        hashes = self.hashes
        if len(hashes) == 1:
            update = hashes[0].update
            async for chunk in chunks:
                update(chunk)
                self.fed += len(chunk)
                yield chunk
            return
        async for chunk in chunks:
            for h in hashes:
                h.update(chunk)
            self.fed += len(chunk)
            yield chunk

    def state(self) -> str:
        saved: dict[str, object] = {"offset": self.offset + self.fed}
        for h in self.hashes:
            saved[h.name] = h.state()
        return json.dumps(saved, separators=(",", ":"))

    def field_value(self) -> str:
        return ", ".join(f"{FIELD_NAMES[h.name]}=:{base64.b64encode(h.digest()).decode('ascii')}:" for h in self.hashes)


class Digests:
    """``--digest``: what the write and finish paths call (see the module's docstring)."""

    def __init__(self, algorithms: tuple[str, ...], readable_while_incomplete: bool) -> None:
        self.algorithms = algorithms
        self.readable_while_incomplete = readable_while_incomplete

    def _resume(self, info: UploadInfo) -> Running | None:
        """The saved state, when it is one of these algorithms for exactly the stored offset."""
        raw = info.storage.get(STATE_KEY) if info.storage else None
        saved = self._parse(raw, info.id)
        if saved is None or saved[0] != info.offset:
            return None
        return Running(info.offset, saved[1])

    def _parse(self, raw: str | None, upload_id: str) -> tuple[int, list[hashstate.ResumableHash]] | None:
        if not raw:
            return None
        try:
            saved = json.loads(raw)
            offset = saved["offset"]
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ValueError("no offset")
            return offset, [hashstate.ResumableHash.resume(name, str(saved[name])) for name in self.algorithms]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("upload %s: its saved digest state is unusable (%s); the digest starts over", upload_id, exc)
            return None

    def _fresh(self) -> list[hashstate.ResumableHash]:
        return [hashstate.ResumableHash(name) for name in self.algorithms]

    async def before_write(self, upload: Upload, info: UploadInfo) -> Running | None:
        """The running hashes at the stored offset, for the request about to write; None when they cannot be had
        without reading what cannot be read (the digest is then computed at finish)."""
        running = self._resume(info)
        if running is not None:
            return running
        if info.offset == 0:
            return Running(0, self._fresh())
        if not self.readable_while_incomplete:
            return None
        # Behind the stored offset (a process died before saving, or a store kept less than was hashed), or an
        # upload begun before --digest: read back only what the saved state does not cover.
        saved = self._parse(info.storage.get(STATE_KEY) if info.storage else None, info.id)
        start, hashes = saved if saved is not None and saved[0] < info.offset else (0, self._fresh())
        log.info("upload %s: catching the digest up from byte %d to %d", info.id, start, info.offset)
        async for block in upload.reader(start, info.offset):
            for h in hashes:
                h.update(block)
        return Running(info.offset, hashes)

    async def after_write(self, upload: Upload, info: UploadInfo, running: Running | None, written: int) -> UploadInfo:
        """Save the state after a write (``info`` is the upload after it). When the store kept other than what was
        hashed, nothing is saved: the next writer catches up. A complete upload's state is not saved but handed to
        :meth:`finish` in ``info``. A failure to save is logged, not raised: the bytes are stored, and the next
        writer catches up."""
        if running is None or not written:
            return info
        if running.fed != written or running.offset + written != info.offset:
            log.info("upload %s: %d bytes hashed, %d stored; the next write catches the digest up",
                     info.id, running.fed, written)
            return info
        state = running.state()
        updated = info.with_storage({STATE_KEY: state})
        if info.is_complete:
            return updated
        try:
            await base.annotatable(upload).annotate({STATE_KEY: state})
        except Exception as exc:  # noqa: BLE001 - the bytes are stored: the digest catches up later
            log.warning("upload %s: the digest state could not be saved: %s", info.id, exc)
            return info
        return updated

    async def finish(self, upload: Upload, info: UploadInfo) -> UploadInfo:
        """The finished upload's digest, stored in its info (``Storage["Repr-Digest"]``); from the running state
        when it covers every byte, else by reading the upload once (a final, or a state that could not be kept)."""
        if info.storage and DIGEST_KEY in info.storage:
            return info
        running = self._resume(info)
        if running is None:
            hashes = self._fresh()
            if info.size:  # (no read of an empty range: S3 refuses one)
                async for block in upload.reader(0, info.size):
                    for h in hashes:
                        h.update(block)
            running = Running(info.size, hashes)
        changes: dict[str, str | None] = {DIGEST_KEY: running.field_value(), STATE_KEY: None}
        await base.annotatable(upload).annotate(changes)
        return info.with_storage(changes)

