"""Writing a chunk under a checksum (checksum and checksum-trailer extensions).

The chunk goes to the upload all-or-nothing (:class:`~pytusd.stores.Verifiable`): kept only if it arrived whole and
its digest matches. The header rules (algorithms, parsing) are in :mod:`.grammar`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from .. import errors
from ..stores import Verifiable
from . import grammar
from .body import RequestBody
from .http import Request


async def write_checked(
    upload: Verifiable, offset: int, body: RequestBody, chunks: AsyncIterable[bytes], checksum: tuple[str, bytes]
) -> int:
    """``Upload-Checksum`` header: the digest of ``chunks`` (the body's) is computed while they stream, no
    buffering."""
    algorithm, expected = checksum
    hasher = grammar.new_hasher(algorithm)

    async def hashed() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            hasher.update(chunk)
            yield chunk

    async def verify(_written: int) -> bool:
        # A chunk that did not arrive whole cannot be checked, so it is not kept either.
        if body.error is not None or not body.complete:
            return False
        if hasher.digest() != expected:
            body.error = errors.ERR_CHECKSUM_MISMATCH()
            return False
        return True

    return await upload.write_verified(offset, hashed(), verify)


def trailer_announced(request: Request) -> bool:
    """The request announces ``Trailer: Upload-Checksum``."""
    announced = request.headers.get("trailer", "").lower()
    return "upload-checksum" in [t.strip() for t in announced.split(",")]


async def write_trailer_checked(
    upload: Verifiable, request: Request, offset: int, body: RequestBody, chunks: AsyncIterable[bytes]
) -> int:
    """``Upload-Checksum`` trailer: the algorithm is only known at the end, so the stored chunk is read back (from
    the page cache, for the file store) and hashed before it is kept."""

    async def verify(written: int) -> bool:
        if body.error is not None or not body.complete:
            return False
        header = request.trailer("upload-checksum")
        if header is None:
            body.error = errors.ERR_INVALID_CHECKSUM("the announced Upload-Checksum trailer did not come")
            return False
        try:
            algorithm, expected = grammar.parse_checksum(header)
        except errors.TusError as exc:
            body.error = exc
            return False
        hasher = grammar.new_hasher(algorithm)
        async for block in upload.reader(offset, offset + written):
            hasher.update(block)
        if hasher.digest() != expected:
            body.error = errors.ERR_CHECKSUM_MISMATCH()
            return False
        return True

    return await upload.write_verified(offset, chunks, verify)
