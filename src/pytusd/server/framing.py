"""What HTTP/1.1 framing costs besides a request's data, bounded before the parser sees the bytes.

httptools (llhttp) buffers a header or trailer field until its line ends and reads chunk extensions without end, so
the connection (pytusd.server.h1) counts those bytes itself: a request head by :func:`find_head_end`, a chunked body
by :class:`ChunkedFraming`. Also here: bare-LF line endings in a request head, which Go's net/http (and so tusd)
accepts and llhttp does not (:func:`normalize_head`).
"""

from __future__ import annotations

import dataclasses
import re

# What the parser reads of a chunked request body besides its data, bounded as Go's net/http (tusd's server) bounds
# it: there a chunk-size line may take 4 KiB and a trailer section about as much as its 4 KiB read buffer holds (pytusd
# allows a little more). Past a limit the client gets 431 ERR_HEADERS_TOO_LARGE (unless it was answered already) and
# the connection is closed; the body bytes received before are stored, as when a client disconnects.
MAX_CHUNK_LINE_SIZE = 4 * 1024  # one chunk-size line, chunk extensions and line break included
MAX_TRAILER_SIZE = 16 * 1024  # a request's trailer section, every line and line break included
MAX_TRAILER_FIELDS = 64  # the fields of a request's trailer section


@dataclasses.dataclass(frozen=True)
class FramingLimits:
    """What a chunked request body may carry besides its data (see MAX_CHUNK_LINE_SIZE)."""

    chunk_line_size: int = MAX_CHUNK_LINE_SIZE
    trailer_size: int = MAX_TRAILER_SIZE
    trailer_fields: int = MAX_TRAILER_FIELDS

    def __post_init__(self) -> None:
        if min(self.chunk_line_size, self.trailer_size, self.trailer_fields) < 1:
            raise ValueError("the chunk-line and trailer limits must be at least 1")


class FramingTooLarge(Exception):
    """A chunk-size line or a trailer section went past its limit. ``message`` says which, for the client; ``at`` is
    where that line or section began in the bytes scanned last (0: in earlier ones): the bytes before are sound."""

    def __init__(self, message: str, at: int) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")


class ChunkedFraming:
    """Follows a chunked request body byte for byte, beside httptools, and counts what is not data.

    httptools buffers every trailer field until its line ends, and reads chunk extensions without end, so both must
    be bounded before the parser sees the bytes (as the request head is). :meth:`scan` is given the bytes after the
    request head as they arrive; chunk data is skipped by its length, so only size lines and trailers cost a look.
    Whether the bytes are well-formed is still the parser's to say: a chunk-size line that does not start with a
    hex digit ends the following (:attr:`lost`), and the parser rejects it. :attr:`done`: the body has ended.
    """

    __slots__ = ("limits", "state", "line", "line_size", "left", "trailer_size", "trailer_fields", "lost", "done")

    SIZE_LINE, DATA, DATA_END, TRAILERS = range(4)

    def __init__(self, limits: FramingLimits) -> None:
        self.limits = limits
        self.state = self.SIZE_LINE
        self.line = b""  # the current chunk-size line (bounded by the limit), or the start of a trailer line
        self.line_size = 0  # bytes of the current line so far
        self.left = 0  # data bytes of the current chunk still to come
        self.trailer_size = 0
        self.trailer_fields = 0
        self.lost = False
        self.done = False

    def scan(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to this body: all of them, or fewer when the body ends inside it.
        Raises :class:`FramingTooLarge` as soon as the bytes go past a limit, before the parser could see them."""
        if self.done:
            return 0
        limits = self.limits
        pos, n = 0, len(data)
        start = 0  # where the current chunk line or the trailer section began in data
        while pos < n and not self.lost:
            if self.state == self.DATA:
                take = min(self.left, n - pos)
                self.left -= take
                pos += take
                if not self.left:
                    self.state = self.DATA_END
                continue
            if self.state != self.TRAILERS and not self.line_size:
                start = pos
            eol = data.find(b"\n", pos)
            end = n if eol < 0 else eol + 1
            self.line_size += end - pos
            if self.state == self.TRAILERS:
                self.trailer_size += end - pos
                if self.trailer_size > limits.trailer_size:
                    raise FramingTooLarge(self._trailer_message(), start)
                if len(self.line) < 2:
                    self.line += data[pos : min(end, pos + 2)]
            else:
                if self.line_size > limits.chunk_line_size:
                    raise FramingTooLarge(
                        f"a chunk-size line (with its chunk extensions) may take {limits.chunk_line_size} bytes at "
                        "most", start
                    )
                if self.state == self.SIZE_LINE:
                    self.line += data[pos:end]
            pos = end
            if eol < 0:
                break
            state = self.state
            if self._line_ended():
                self.done = True
                return pos
            if self.trailer_fields > limits.trailer_fields:
                raise FramingTooLarge(self._trailer_message(), start)
            if self.state == self.TRAILERS and state != self.TRAILERS:
                start = pos
        return n

    def _trailer_message(self) -> str:
        limits = self.limits
        return f"the trailer section may take {limits.trailer_size} bytes and {limits.trailer_fields} fields at most"

    def _line_ended(self) -> bool:
        """A line is complete: move on. True when it was the blank line that ends the trailer section."""
        state, line = self.state, self.line
        self.line, self.line_size = b"", 0
        if state == self.SIZE_LINE:
            match = _CHUNK_SIZE.match(line)
            if match is None:
                self.lost = True  # not a chunk-size line: the parser rejects it
                return False
            self.left = int(match.group(), 16)
            self.state = self.DATA if self.left else self.TRAILERS
        elif state == self.DATA_END:
            self.state = self.SIZE_LINE
        elif line in (b"\r\n", b"\n"):
            return True
        else:
            self.trailer_fields += 1
        return False


_HEAD_END = re.compile(rb"\n\r?\n")


def find_head_end(tail: bytes, data: bytes) -> int:
    """Where a request head ends in ``data`` (just past the blank line), its end maybe begun in ``tail`` (the head's
    last bytes before ``data``, at most 2), or -1. A line may end in CRLF or a bare LF, as Go reads it."""
    if tail:
        joined = tail + data[:2]
        match = _HEAD_END.search(joined)
        if match is not None and match.end() > len(tail):
            return match.end() - len(tail)
    match = _HEAD_END.search(data)
    return -1 if match is None else match.end()


_BARE_LF = re.compile(rb"(?<!\r)\n")


def normalize_head(head: bytes) -> bytes:
    """A request head with every bare LF line ending made CRLF (RFC 9112 section 2.2 lets a recipient accept a bare
    LF; Go does, llhttp does not). A CR elsewhere stays, and the parser refuses it, as Go does."""
    if head.count(b"\n") == head.count(b"\r\n"):
        return head
    return _BARE_LF.sub(b"\r\n", head)
