"""How an upload is cut into numbered pieces (S3 parts, Azure blocks, GCS chunk objects): pure arithmetic.

One :class:`PiecePlan` serves every object store; only the limits differ. A store that caps the number of pieces
must keep every upload within that cap: for a known length the piece size is ``max(preferred, length / cap)``; for
a deferred length it doubles every ``doubling`` pieces. The bytes left at the end of a request become a short piece
only while the pieces after it can still hold the rest of the upload, else they wait in a tail object and start the
next request's first piece (tusd #1247: many small PATCHes of a huge upload would otherwise run out of pieces).
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import errors


@dataclass(frozen=True)
class PiecePlan:
    """A store's limits, and the piece sizes and placements that follow from them.

    ``min_size``: every piece but the last must have at least this many bytes (S3's 5 MiB). ``max_pieces``: 0 when
    the store takes any number of pieces (GCS composes them at the end). ``max_deferred``: what a deferred-length
    upload may grow to; kept below what the pieces hold, the margin is what lets a request end in a short piece for a
    long time. ``grow_to_fit``: for a known length, a piece also grows when the pieces left must hold more than the
    planned size (a length declared after many pieces were used). ``limit_name`` and ``remaining_name`` are the
    store's words in errors.
    """

    preferred_size: int
    max_size: int
    min_size: int = 1
    max_pieces: int = 0
    max_total: int | None = None
    max_deferred: int | None = None
    doubling: int | None = 1_000
    grow_to_fit: bool = False
    limit_name: str = "objects"
    remaining_name: str = "the remaining pieces"

    def base_size(self, length: int) -> int:
        """The piece size of an upload of ``length`` bytes: ``max_pieces`` of them hold it."""
        needed = -(-length // self.max_pieces) if self.max_pieces else 0
        return min(self.max_size, max(self.preferred_size, self.min_size, needed))

    def size_of(self, number: int, length: int | None, start: int = 0) -> int:
        """The size of full piece ``number`` (1-based), which starts at byte ``start``, of an upload of ``length``
        bytes (None: deferred)."""
        if length is None:
            doublings = 0 if self.doubling is None else min((number - 1) // self.doubling, 40)
            return min(self.max_size, max(self.preferred_size, self.min_size) << doublings)
        size = self.base_size(length)
        if self.grow_to_fit and self.max_pieces:
            left = max(1, self.max_pieces - number + 1)
            size = min(self.max_size, max(size, -(-(length - start) // left)))
        return size

    def capacity(self, first: int, length: int | None) -> int:
        """How many bytes full pieces ``first`` up to ``max_pieces`` hold at the planned sizes."""
        assert self.max_pieces, "an unbounded number of pieces holds anything"
        if first > self.max_pieces:
            return 0
        if length is not None:
            return (self.max_pieces - first + 1) * self.base_size(length)
        if self.doubling is None:
            return (self.max_pieces - first + 1) * self.size_of(first, None)
        total, number = 0, first
        while number <= self.max_pieces:
            group_end = min(self.max_pieces, ((number - 1) // self.doubling + 1) * self.doubling)
            total += (group_end - number + 1) * self.size_of(number, None)
            number = group_end + 1
        return total

    def remainder_is_piece(self, number: int, size: int, offset_after: int, length: int | None) -> bool:
        """Where the ``size`` bytes left at the end of a request go: piece ``number`` (True) or the tail object.
        The last bytes of an upload are always its last piece, whatever their size; else a short piece must meet
        the minimum, and the pieces after it must be able to hold everything that is left."""
        if length is not None and offset_after == length:
            return True
        if size < self.min_size:
            return False
        if not self.max_pieces:
            return True
        limit = length if length is not None else self.max_deferred if self.max_deferred is not None else self.max_total
        assert limit is not None, "a bounded number of pieces needs a bounded upload size"
        return self.capacity(number + 1, length) >= limit - offset_after

    def check_length(self, length: int) -> None:
        too_large = self.max_total is not None and length > self.max_total
        if too_large or (self.max_pieces and self.base_size(length) * self.max_pieces < length):
            raise errors.ERR_MAX_SIZE_EXCEEDED(f"{self.limit_name} are at most {self.max_total} bytes")

    def check_fits(self, length: int, next_number: int, offset: int) -> None:
        """A length declared after ``offset`` bytes went into pieces up to ``next_number - 1``: the pieces left must
        be able to hold the rest."""
        self.check_length(length)
        if not self.max_pieces:
            return
        room = max(0, self.max_pieces - next_number + 1) * self.max_size
        if length - offset > room:
            raise errors.ERR_MAX_SIZE_EXCEEDED(f"{self.remaining_name} hold at most {offset + room} bytes")
