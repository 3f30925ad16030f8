"""The grammar of tus and HTTP headers: parsing and serialising, URLs, ranges, dates, CORS lists, all without I/O.

Each function here is the one place a rule lives; the handler flows call them and never parse headers themselves.
Sections named below are those of the tus 1.0 specification (https://tus.io/protocols/resumable-upload).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import hashlib
import re
import urllib.parse
import zlib
from collections.abc import Mapping

from .. import errors
from ..info import is_valid_upload_id

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
INT64_MAX = 2**63 - 1

_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_non_negative_int(value: str | None) -> int | None:
    """A non-negative int64 in plain decimal, or None when the value is anything else (Upload-Offset, -Length)."""
    if value is None or not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if number <= INT64_MAX else None


def parse_offset(value: str | None) -> int:
    """``Upload-Offset`` of a PATCH (core protocol): 400 ERR_INVALID_OFFSET unless a non-negative integer."""
    offset = parse_non_negative_int(value)
    if offset is None:
        raise errors.ERR_INVALID_OFFSET()
    return offset


def parse_creation_length(length: str | None, defer: str | None, can_defer: bool) -> tuple[int, bool]:
    """``Upload-Length`` / ``Upload-Defer-Length`` of a creation request -> (size, size_is_deferred).

    Items 24-26, 33-34, with tusd's order of checks: a deferred length the store cannot handle is 501, both headers
    400 AMBIGUOUS, a defer value other than ``1`` 400, otherwise the length must be a non-negative int64.
    """
    if defer == "1" and not can_defer:
        raise errors.ERR_NOT_IMPLEMENTED("this server cannot defer the upload length")
    if length not in (None, "") and defer not in (None, ""):
        raise errors.ERR_AMBIGUOUS_UPLOAD_LENGTH()
    if defer not in (None, ""):
        if defer != "1":
            raise errors.ERR_INVALID_UPLOAD_LENGTH_DEFER()
        return 0, True
    size = parse_non_negative_int(length)
    if size is None:
        raise errors.ERR_INVALID_UPLOAD_LENGTH()
    return size, False


# --- checksum extension ---------------------------------------------------------------------------------------


class _Crc32:
    """CRC-32 (IEEE, as zlib) with hashlib's update/digest shape; the digest is 4 bytes, big-endian."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256", "sha512", "crc32")
MAX_CHECKSUM_LENGTH = 128  # base64 characters of a digest; SHA-512's 64 bytes take 88


def parse_checksum(header: str) -> tuple[str, bytes]:
    """``Upload-Checksum: <algorithm> <base64 digest>`` -> (algorithm, digest). Unknown algorithms and malformed
    values are 400; names are lowercase ASCII. A digest longer than any algorithm's is malformed
    before it is decoded."""
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise errors.ERR_UNSUPPORTED_CHECKSUM_ALGORITHM()
    if len(encoded) > MAX_CHECKSUM_LENGTH:
        raise errors.ERR_INVALID_CHECKSUM(f"the digest may take {MAX_CHECKSUM_LENGTH} base64 characters at most")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise errors.ERR_INVALID_CHECKSUM() from None
    if not digest:
        raise errors.ERR_INVALID_CHECKSUM()
    return algorithm, digest


def new_hasher(algorithm: str) -> hashlib._Hash | _Crc32:
    return _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)


# --- Upload-Metadata (creation extension) ---------------------------------------------------------------------------------

_METADATA_KEY = re.compile(r"[!-~]+")  # visible ASCII; a key has no space and no comma by construction


def parse_metadata(
    header: str | None, *, strict: bool = False, max_size: int = 0, max_pairs: int = 0
) -> dict[str, str]:
    """Parse ``Upload-Metadata`` the way tusd does.

    Pairs are split on ``,`` and trimmed, then on a single space. A pair with more than two parts or an empty key
    is skipped, a key without a value maps to ``""``, a value that is not valid base64 (or not UTF-8) drops the pair,
    and a later duplicate key wins. An empty header means no metadata (tuspy sends one).

    ``strict`` (what the request flows use; tusd drops such pairs silently) answers every pair that would be
    dropped, and a repeated key (the spec says keys are unique), with 400 ERR_INVALID_METADATA; empty elements
    (``a x,,``) are still ignored. A header longer than ``max_size`` bytes or with more than ``max_pairs`` pairs is
    431 ERR_METADATA_TOO_LARGE (0: no limit), checked before anything is decoded.
    """
    meta: dict[str, str] = {}
    if not header:
        return meta
    if max_size and len(header) > max_size:
        raise errors.ERR_METADATA_TOO_LARGE(f"Upload-Metadata is longer than {max_size} bytes")
    elements = header.split(",")
    if max_pairs and len(elements) > max_pairs and sum(1 for e in elements if e.strip()) > max_pairs:
        raise errors.ERR_METADATA_TOO_LARGE(f"Upload-Metadata has more than {max_pairs} pairs")
    for element in elements:
        element = element.strip()
        if not element:
            continue
        parts = element.split(" ")
        key = parts[0]
        if len(parts) > 2 or not _METADATA_KEY.fullmatch(key):
            if strict:
                raise errors.ERR_INVALID_METADATA(
                    "each Upload-Metadata pair is a key of visible ASCII, optionally a space and a base64 value"
                )
            continue
        if strict and key in meta:
            raise errors.ERR_INVALID_METADATA(f"the Upload-Metadata key {key!r} appears twice")
        if len(parts) == 1:
            meta[key] = ""
            continue
        try:
            value = base64.b64decode(parts[1], validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            if strict:
                raise errors.ERR_INVALID_METADATA(
                    f"the Upload-Metadata value of {key!r} is not base64 of UTF-8 text"
                ) from None
            continue
        meta[key] = value
    return meta


def serialize_metadata(meta: Mapping[str, str]) -> str:
    """``Upload-Metadata`` for a HEAD response (creation). Keys that could not travel in a header are left out."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode('utf-8', 'replace')).decode('ascii')}" if value else key
        for key, value in meta.items()
        if _METADATA_KEY.fullmatch(key) and "," not in key
    )


# --- Upload-Concat (concatenation extension) ----------------------------------------------------------------------------


def parse_concat(header: str | None) -> tuple[str | None, list[str]]:
    """``Upload-Concat`` -> (``"partial"`` | ``"final"`` | None, the URLs of a final's partials in order).

    A final must name at least one URL (400 ERR_INVALID_CONCAT otherwise); URLs are space-separated and may be
    absolute or relative. Anything that is neither ``partial`` nor ``final;...`` is invalid too.
    """
    if not header:
        return None, []
    header = header.strip()
    if header == "partial":
        return "partial", []
    if header.startswith("final;"):
        urls = [u for u in header[len("final;") :].split(" ") if u.strip()]
        if urls:
            return "final", [u.strip() for u in urls]
    raise errors.ERR_INVALID_CONCAT()


def upload_id_from_url(url: str, uploads_path: str) -> str:
    """The upload ID in an absolute or relative upload URL whose path lies under ``uploads_path``.

    A URL outside the uploads path, or naming an ID that could not be an upload, is 404 ERR_UPLOAD_NOT_FOUND: it
    never reaches a store.
    """
    try:
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise errors.ERR_UPLOAD_NOT_FOUND("a partial upload's URL is invalid") from None
    if not path.startswith(uploads_path):
        raise errors.ERR_UPLOAD_NOT_FOUND("a partial upload's URL is not under this server's uploads")
    upload_id = path[len(uploads_path) :].strip("/")
    if not is_valid_upload_id(upload_id):
        raise errors.ERR_UPLOAD_NOT_FOUND("a partial upload's URL names no upload")
    return upload_id


# --- methods -------------------------------------------------------------------------------------------------------


def method_override(method: str, override: str | None) -> str:
    """The method a request means: a ``POST`` with ``X-HTTP-Method-Override`` means the method it names (for clients
    that cannot send PATCH or DELETE, as in tusd); an empty one changes nothing."""
    if method == "POST" and override and (named := override.strip().upper()):
        return named
    return method


# --- URLs ----------------------------------------------------------------------------------------------------------

_FORWARDED_HOST = re.compile(r'(?i)(?:^|[;,\s])host="?([^";,\s]+)')
_FORWARDED_PROTO = re.compile(r'(?i)(?:^|[;,\s])proto="?(https?)\b')
# A name or IPv4 address, or an IPv6 literal in brackets, then maybe a port: what makes a valid URL authority.
_HOST = re.compile(r"(?:[A-Za-z0-9.\-_%]{1,255}|\[[A-Za-z0-9.:%\-]{2,80}\])(?::[0-9]{0,5})?")


def request_origin(
    scheme: str, host: str | None, headers: Mapping[str, str], behind_proxy: bool
) -> tuple[str, str]:
    """(proto, host) for absolute URLs. With ``behind_proxy``, X-Forwarded-Host/-Proto and then ``Forwarded``
    override what the connection says, and the default port is dropped (tusd's rules)."""
    proto = "https" if scheme in ("https", "wss") else "http"
    host = host or "localhost"
    if behind_proxy:
        forwarded_host = headers.get("x-forwarded-host")
        if forwarded_host:
            host = forwarded_host.split(",")[0].strip()
        forwarded_proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if forwarded_proto in ("http", "https"):
            proto = forwarded_proto
        forwarded = headers.get("forwarded")
        if forwarded:
            if m := _FORWARDED_HOST.search(forwarded):
                host = m.group(1)
            if m := _FORWARDED_PROTO.search(forwarded):
                proto = m.group(1).lower()
        if proto == "http" and host.endswith(":80"):
            host = host[:-3]
        elif proto == "https" and host.endswith(":443"):
            host = host[:-4]
    if not _HOST.fullmatch(host):
        # A Host header is reflected into Location: never let an odd one inject anything.
        host = "localhost"
    return proto, host


_ORIGIN = re.compile(r"null|[A-Za-z][A-Za-z0-9+.\-]*://[!-~]+")


def is_origin(value: str) -> bool:
    """Whether an ``Origin`` header is a serialized origin (``scheme://host[:port]`` or ``null``), which is all
    browsers send, and so safe to reflect in Access-Control-Allow-Origin."""
    return _ORIGIN.fullmatch(value) is not None


def upload_url(proto: str, host: str, base_path: str, upload_id: str) -> str:
    return f"{proto}://{host}{base_path}{urllib.parse.quote(upload_id, safe=_URL_SAFE)}"


_URL_SAFE = "/-._~!$'()*+,;=:@"


# --- downloads (GET) -----------------------------------------------------------------------------------------------

def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``Range: bytes=...`` -> (first, last) inclusive, or None to serve the whole content.

    Forms other than one byte range (several ranges, other units, malformed) are ignored, as RFC 9110 allows. A
    range that starts past the end raises 416.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    if first_text == "":
        suffix = parse_non_negative_int(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            raise errors.ERR_RANGE_NOT_SATISFIABLE(headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - suffix), size - 1
    first = parse_non_negative_int(first_text)
    last = parse_non_negative_int(last_text) if last_text else size - 1
    if first is None or last is None:
        return None
    if first >= size:
        raise errors.ERR_RANGE_NOT_SATISFIABLE(headers={"Content-Range": f"bytes */{size}"})
    if last < first:
        return None
    return first, min(last, size - 1)


# --- CORS defaults (tusd's CorsConfig) -----------------------------------------------------------------------------

CORS_ALLOW_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"
CORS_ALLOW_HEADERS = (
    "Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, Content-Type, Upload-Length, "
    "Upload-Offset, Tus-Resumable, Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Incomplete, "
    "Upload-Complete, Upload-Draft-Interop-Version, Upload-Checksum"
)
CORS_EXPOSE_HEADERS = (
    "Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, "
    "Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Incomplete, Upload-Complete, "
    "Upload-Draft-Interop-Version, Tus-Checksum-Algorithm, X-Request-ID, Repr-Digest"
)


def merge_header_lists(required: str, extra: str) -> str:
    """A comma-separated header list with ``extra`` entries appended to ``required`` ones, without duplicates."""
    items = [x.strip() for x in required.split(",") if x.strip()]
    seen = {x.lower() for x in items}
    for x in extra.split(","):
        x = x.strip()
        if x and x.lower() not in seen:
            items.append(x)
            seen.add(x.lower())
    return ", ".join(items)


# --- conditional requests (RFC 9110 section 13) --------------------------------------------------------------------


def entity_tag(size: int, mtime: float) -> str:
    """A strong validator for stored bytes: uploads only grow, so size and modification time identify them."""
    return f'"{size:x}-{int(mtime * 1_000_000):x}"'


def _etag_listed(header: str, etag: str, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if weak and candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 section 5.6.7: the preferred IMF-fixdate and the two obsolete forms a recipient must also accept, always
# in GMT. The day names are checked for form only, as the RFC allows; the groups are day, month, year and time.
_IMF_FIXDATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(
    rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")
MAX_HTTP_DATE_LENGTH = 64  # the longest valid form (RFC 850, Wednesday) has 33 characters


def _parse_http_date(value: str) -> float | None:
    """An HTTP-date (RFC 9110) as a POSIX timestamp, or None when it is not one: a conditional header whose date is
    invalid is ignored, as the RFC says. The value is bounded and matched whole before any number is built, and
    every number then has its few digits, so nothing here can raise."""
    value = value.strip()
    if len(value) > MAX_HTTP_DATE_LENGTH:
        return None
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, short_year, hour, minute, second = match.groups()
        year = str(_full_year(int(short_year)))
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    try:
        moment = datetime.datetime(
            int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second),
            tzinfo=datetime.timezone.utc,
        )
    except ValueError:  # 31 February, hour 24, second 60, year 0
        return None
    return moment.timestamp()


def _full_year(two_digits: int) -> int:
    """RFC 9110: a two-digit year more than 50 years in the future is the most recent past year ending so."""
    this_year = datetime.datetime.now(datetime.timezone.utc).year
    year = this_year - this_year % 100 + two_digits
    return year - 100 if year > this_year + 50 else year


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def check_preconditions(headers: Mapping[str, str], etag: str, mtime: float) -> int | None:
    """The status a conditional GET ends with before any body (412 or 304), or None to go on."""
    whole_seconds = int(mtime)
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _etag_listed(if_match, etag, weak=False):
            return 412
    elif (since := headers.get("if-unmodified-since")) is not None:
        date = _parse_http_date(since)
        if date is not None and whole_seconds > date:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _etag_listed(if_none_match, etag, weak=True):
            return 304
    elif (since := headers.get("if-modified-since")) is not None:
        date = _parse_http_date(since)
        if date is not None and whole_seconds <= date:
            return 304
    return None


def range_applies(headers: Mapping[str, str], etag: str, mtime: float) -> bool:
    """Whether ``Range`` is honoured: without ``If-Range``, or when it names the current validator."""
    if_range = headers.get("if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith('"'):
        return if_range == etag
    date = _parse_http_date(if_range)
    return date is not None and int(mtime) == int(date)
