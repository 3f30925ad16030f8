"""Property-based tests (hypothesis) of every header rule, and of the app under hostile header values.

Properties: a parser either returns a value within its documented bounds or raises a :class:`TusError` with a 4xx
status (never another exception), serialisers and parsers round-trip, nothing a client sends reaches a response
header unescaped, and the app answers bad input with a tus error (``ERR_...`` body, never a 5xx).

The number of examples per group is printed at the end of the run ("hypothesis examples tried"), for README's
Reliability table. ``PYTUSD_PROPERTY_SCALE=10`` runs ten times as many examples.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import string
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytusd import Config, FileStore, MemoryLocker, TusApp, errors
from pytusd.core import draft, grammar
from pytusd.info import INLINE_MEDIA_TYPES, download_headers, is_valid_upload_id

SCALE = float(os.environ.get("PYTUSD_PROPERTY_SCALE", "1"))
T = TypeVar("T")


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


def fast(n: int) -> settings:
    return settings(max_examples=examples(n), deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- counting examples (README "Reliability": examples tried) ----------------------------------------------------

EXAMPLES: collections.Counter[str] = collections.Counter()


class _Summary:
    """Prints the examples counted by every module that uses :func:`report_examples` once, at the very end."""

    def __init__(self) -> None:
        self.tables: dict[str, collections.Counter[str]] = {}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for title, counts in self.tables.items():
            if not counts:
                continue
            terminalreporter.write_sep("-", f"hypothesis examples tried: {title}")
            for group, n in sorted(counts.items()):
                terminalreporter.write_line(f"  {group:<56} {n:>7}")
            if not any(group.startswith("=") for group in counts):  # tables with "= ..." lines have their own totals
                terminalreporter.write_line(f"  {'total':<56} {sum(counts.values()):>7}")
        if path := os.environ.get("PYTUSD_RELIABILITY_REPORT"):
            with open(path, "w") as f:
                json.dump({title: dict(counts) for title, counts in self.tables.items()}, f, indent=2)


def report_examples(request: pytest.FixtureRequest, title: str, counts: collections.Counter[str]) -> None:
    manager = request.config.pluginmanager
    summary = manager.get_plugin("pytusd-examples")
    if summary is None:
        summary = _Summary()
        manager.register(summary, "pytusd-examples")
    summary.tables[title] = counts


@pytest.fixture(scope="module", autouse=True)
def _examples_summary(request):
    report_examples(request, "tests/test_properties.py", EXAMPLES)


def tried(group: str) -> None:
    EXAMPLES[group] += 1


def raises_client_error(call: Callable[[], T], *, allow: Iterable[int] = ()) -> T | errors.TusError:
    """Run a parser: a value, or the TusError it raised, which must be a 4xx (or an explicitly allowed status)."""
    try:
        return call()
    except errors.TusError as exc:
        assert 400 <= exc.status < 500 or exc.status in allow, exc
        assert exc.code.startswith("ERR_") and exc.body.startswith(exc.code)
        return exc


# -- strategies ------------------------------------------------------------------------------------------------------

# What an ASGI server hands over: header values decoded as Latin-1, so any code point below 256.
latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
ascii_printable = st.text(alphabet=string.printable, max_size=40)
unicode_text = st.text(max_size=30)  # any code point but surrogates
with_surrogates = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
metadata_key = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
                       min_size=1, max_size=12)
# A field value as uvicorn (httptools) and h11 accept it in a response: no control characters but HTAB.
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def number_like() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.integers(min_value=0, max_value=2**64).map(lambda n: f"+{n}"),
        st.integers(min_value=0, max_value=10**6).map(lambda n: f"{n:025d}"),
        st.text(alphabet="0123456789+- .e_x\t", max_size=22),
        st.sampled_from(["１", "²", "٣", "0x10", "1_000", "1e3", " 7", "7 ", "", "9223372036854775807",
                         "9223372036854775808", "00000000000000000009"]),
        latin1,
    )


# -- integers: Upload-Length, Upload-Offset, Content-Length ----------------------------------------------------------


@fast(400)
@given(number_like())
def test_integers_are_plain_digits_within_int64(text):
    tried("integers (Upload-Length, Upload-Offset)")
    value = grammar.parse_non_negative_int(text)
    if value is None:
        result = raises_client_error(lambda: grammar.parse_offset(text))
        assert isinstance(result, errors.TusError) and result.code == "ERR_INVALID_OFFSET" and result.status == 400
    else:
        assert 0 <= value <= grammar.INT64_MAX
        assert re.fullmatch(r"[0-9]{1,19}", text), "only ASCII digits, no sign, no space, at most 19 of them"
        assert int(text) == value == grammar.parse_offset(text)


@fast(200)
@given(st.integers(min_value=0, max_value=grammar.INT64_MAX))
def test_every_int64_round_trips(n):
    tried("integers (Upload-Length, Upload-Offset)")
    assert grammar.parse_non_negative_int(str(n)) == n
    assert grammar.parse_non_negative_int(f"+{n}") is None
    assert grammar.parse_non_negative_int(f"-{n}") is None


@fast(100)
@given(st.integers(min_value=grammar.INT64_MAX + 1, max_value=2**200))
def test_beyond_int64_is_refused(n):
    tried("integers (Upload-Length, Upload-Offset)")
    assert grammar.parse_non_negative_int(str(n)) is None
    error = raises_client_error(lambda: grammar.parse_creation_length(str(n), None, True))
    assert isinstance(error, errors.TusError) and error.code == "ERR_INVALID_UPLOAD_LENGTH"


@fast(400)
@given(st.one_of(st.none(), number_like()), st.one_of(st.none(), st.sampled_from(["1", "0", "", " 1"]), latin1),
       st.booleans())
def test_creation_length_is_a_size_or_a_tus_error(length, defer, can_defer):
    tried("integers (Upload-Length, Upload-Offset)")
    result = raises_client_error(lambda: grammar.parse_creation_length(length, defer, can_defer), allow=[501])
    if isinstance(result, errors.TusError):
        assert result.status != 501 or (defer == "1" and not can_defer)
        return
    size, deferred = result
    if deferred:
        assert size == 0 and defer == "1" and can_defer and length in (None, "")
    else:
        assert size == grammar.parse_non_negative_int(length) and defer in (None, "")


# -- Upload-Metadata ---------------------------------------------------------------------------------------------


@fast(300)
@given(st.dictionaries(metadata_key, unicode_text, max_size=8))
def test_metadata_round_trips(meta):
    tried("metadata (Upload-Metadata)")
    header = grammar.serialize_metadata(meta)
    assert header.isascii() and FIELD_VALUE.fullmatch(header)
    assert grammar.parse_metadata(header) == meta
    assert grammar.parse_metadata(header, strict=True, max_size=len(header), max_pairs=len(meta)) == meta


def metadata_headers() -> st.SearchStrategy[str]:
    """Headers made of plausible and broken pieces: pairs, bare keys, bad base64, spaces, commas, non-ASCII."""
    b64 = unicode_text.map(lambda v: base64.b64encode(v.encode()).decode())
    piece = st.one_of(
        st.tuples(metadata_key, b64).map(" ".join),
        metadata_key,
        st.tuples(metadata_key, latin1).map(" ".join),
        st.tuples(metadata_key, st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode())).map(" ".join),
        st.tuples(metadata_key, b64, b64).map(" ".join),
        st.tuples(metadata_key, b64).map("  ".join),
        st.sampled_from(["", " ", "k YQ", "k YQ=", "k ====", "k Y Q==", "ké YQ==", "k\tYQ==", "k\x00 YQ==", "k \u00a0"]),
        latin1,
    )
    return st.lists(piece, max_size=6).map(",".join)


@fast(500)
@given(metadata_headers())
def test_metadata_parsing_never_fails_otherwise(header):
    tried("metadata (Upload-Metadata)")
    lenient = grammar.parse_metadata(header)  # tusd's way never raises
    for key, value in lenient.items():
        assert re.fullmatch(r"[!-~]+", key) and "," not in key and isinstance(value, str)
    strict = raises_client_error(lambda: grammar.parse_metadata(header, strict=True))
    if isinstance(strict, errors.TusError):
        assert strict.code == "ERR_INVALID_METADATA" and strict.status == 400
    else:
        # Whatever strict accepts, the lenient parser reads the same way, and it survives a round trip.
        assert strict == lenient
        assert grammar.parse_metadata(grammar.serialize_metadata(strict), strict=True) == strict


@pytest.mark.parametrize(
    "header",
    ["k !!notbase64", "k YQ", "k Y Q==", "k  YQ==", "ké YQ==", "k\tYQ==", "a YQ==,a Yg==", "a,a", "k " + "/w==",
     "k YQ== extra"],
)
def test_metadata_errors_strict_but_dropped_leniently(header):
    with pytest.raises(errors.TusError) as info:
        grammar.parse_metadata(header, strict=True)
    assert info.value.code == "ERR_INVALID_METADATA" and info.value.status == 400
    assert len(grammar.parse_metadata(header)) <= 1


@fast(150)
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=1, max_value=40))
def test_metadata_limits_are_exact(max_size, max_pairs):
    tried("metadata (Upload-Metadata)")
    pairs = [f"k{i} YQ==" for i in range(max_pairs)]
    header = ",".join(pairs)
    if len(header) <= max_size:
        assert len(grammar.parse_metadata(header, strict=True, max_size=max_size, max_pairs=max_pairs)) == max_pairs
    else:
        with pytest.raises(errors.TusError) as info:
            grammar.parse_metadata(header, strict=True, max_size=max_size, max_pairs=max_pairs)
        assert info.value.code == "ERR_METADATA_TOO_LARGE" and info.value.status == 431
    with pytest.raises(errors.TusError) as info:
        grammar.parse_metadata(header + ",extra", strict=True, max_pairs=max_pairs)
    assert info.value.code == "ERR_METADATA_TOO_LARGE"
    # Empty elements are not pairs.
    assert len(grammar.parse_metadata(header + ",,", strict=True, max_pairs=max_pairs)) == max_pairs


@fast(200)
@given(st.dictionaries(st.sampled_from(["filename", "filetype", "name", "x"]), with_surrogates, max_size=4))
def test_serialize_metadata_never_fails(meta):
    """Metadata from a hook may hold anything, lone surrogates included: HEAD must still answer."""
    tried("metadata (Upload-Metadata)")
    header = grammar.serialize_metadata(meta)
    assert header.isascii() and FIELD_VALUE.fullmatch(header)
    assert grammar.parse_metadata(header, strict=True).keys() == meta.keys()


# -- Upload-Concat and upload URLs -------------------------------------------------------------------------------

upload_ids = st.one_of(
    st.text(alphabet=string.hexdigits.lower(), min_size=32, max_size=32),
    st.from_regex(r"[A-Za-z0-9\-._~%!$'()*+,;=:@]{1,20}(/[A-Za-z0-9\-._~]{1,10}){0,2}", fullmatch=True),
).filter(is_valid_upload_id)


@fast(300)
@given(st.one_of(latin1, st.tuples(st.sampled_from(["final;", "final; ", "partial", "final", "Final;", " final;"]),
                                   latin1).map("".join)))
def test_concat_is_partial_final_or_400(header):
    tried("concat (Upload-Concat, upload URLs)")
    result = raises_client_error(lambda: grammar.parse_concat(header))
    if isinstance(result, errors.TusError):
        assert result.code == "ERR_INVALID_CONCAT" and result.status == 400
        return
    kind, urls = result
    if kind is None:
        assert not header and urls == []
    elif kind == "partial":
        assert urls == []
    else:
        assert kind == "final" and urls and all(u and u == u.strip() and " " not in u for u in urls)


@fast(200)
@given(st.lists(upload_ids, min_size=1, max_size=5), st.sampled_from(["http", "https"]),
       st.sampled_from(["tus.test", "example.org:8080", "[::1]:1080"]), st.booleans())
def test_final_urls_round_trip(ids, proto, host, absolute):
    tried("concat (Upload-Concat, upload URLs)")
    urls = [grammar.upload_url(proto, host, "/files/", i) for i in ids]
    if not absolute:
        urls = [urllib.parse.urlsplit(u).path for u in urls]
    kind, parsed = grammar.parse_concat("final;" + " ".join(urls))
    assert kind == "final" and parsed == urls
    assert [grammar.upload_id_from_url(u, "/files/") for u in parsed] == ids


@fast(500)
@given(st.one_of(
    latin1,
    st.tuples(st.sampled_from(["/files/", "http://h/files/", "/files", "/other/", "//files/", "/files/a/"]),
              st.sampled_from(["", "..", "../", "%2e%2e", "%2E%2E/x", "a/../b", "/etc/passwd", "a%00b", "a\\b",
                               "a%5cb", "%2fabs", "a//b", "./a", "a/.", "%ff", "%", "é", "a?b=c", "a#f", "x" * 600]),
              latin1).map("".join),
))
def test_upload_ids_from_urls_never_escape(url):
    tried("upload IDs from URLs")
    result = raises_client_error(lambda: grammar.upload_id_from_url(url, "/files/"))
    if isinstance(result, errors.TusError):
        assert result.code == "ERR_UPLOAD_NOT_FOUND" and result.status == 404
        return
    assert_id_is_contained(result)


def assert_id_is_contained(upload_id: str) -> None:
    assert is_valid_upload_id(upload_id)
    assert upload_id.isascii() and "\x00" not in upload_id and "\\" not in upload_id
    assert not upload_id.startswith("/") and ".." not in upload_id.split("/") and "." not in upload_id.split("/")
    root = os.path.abspath("/srv/uploads")
    joined = os.path.normpath(os.path.join(root, upload_id))
    assert os.path.commonpath([root, joined]) == root and joined != root


@fast(500)
@given(st.one_of(latin1, unicode_text, st.lists(st.sampled_from(["..", ".", "", "a", "%2e", "\x00", "\\", "b c", "~"]),
                                                 max_size=5).map("/".join)))
@example("..")
@example("a/../b")
@example("/abs")
def test_valid_ids_cannot_escape_the_storage(upload_id):
    tried("upload IDs from URLs")
    if is_valid_upload_id(upload_id):
        assert_id_is_contained(upload_id)


@fast(100)
@given(upload_ids)
def test_upload_urls_round_trip(upload_id):
    tried("upload IDs from URLs")
    url = grammar.upload_url("https", "tus.test", "/files/", upload_id)
    assert url.isascii() and FIELD_VALUE.fullmatch(url)
    assert grammar.upload_id_from_url(url, "/files/") == upload_id


# -- Upload-Checksum ---------------------------------------------------------------------------------------------


@fast(400)
@given(st.one_of(
    latin1,
    st.tuples(st.sampled_from(list(grammar.CHECKSUM_ALGORITHMS) + ["SHA1", "sha-1", "crc32c", ""]),
              st.sampled_from([" ", "  ", "\t", ""]),
              st.one_of(st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode()), latin1)).map("".join),
))
def test_checksum_is_a_known_algorithm_and_a_digest_or_400(header):
    tried("checksum (Upload-Checksum)")
    result = raises_client_error(lambda: grammar.parse_checksum(header))
    if isinstance(result, errors.TusError):
        assert result.status == 400
        assert result.code in ("ERR_UNSUPPORTED_CHECKSUM_ALGORITHM", "ERR_INVALID_CHECKSUM")
        return
    algorithm, digest = result
    assert algorithm in grammar.CHECKSUM_ALGORITHMS and isinstance(digest, bytes) and digest


@fast(200)
@given(st.sampled_from(grammar.CHECKSUM_ALGORITHMS), st.binary(max_size=100))
def test_checksum_round_trips(algorithm, data):
    tried("checksum (Upload-Checksum)")
    hasher = grammar.new_hasher(algorithm)
    hasher.update(data)
    digest = hasher.digest()
    assert grammar.parse_checksum(f"{algorithm} {base64.b64encode(digest).decode()}") == (algorithm, digest)


# -- Upload-Draft-Interop-Version --------------------------------------------------------------------------------


@fast(300)
@given(st.one_of(st.none(), latin1, st.integers(-5, 200).map(str), st.sampled_from(["²", "³", "٦", "６", " 6 ", "06"])))
@example("²")  # regression: str.isdigit() says yes, int() raised ValueError (500 on any request)
def test_interop_version_is_a_supported_version_or_none(value):
    tried("interop version (Upload-Draft-Interop-Version)")
    version = draft.parse_interop_version(value)
    assert version is None or (version in draft.VERSIONS and str(version) == value.strip().lstrip("0"))


# -- X-Forwarded-Host / X-Forwarded-Proto / Forwarded ------------------------------------------------------------

HOST = re.compile(r"(?:[A-Za-z0-9.\-_%]{1,255}|\[[A-Za-z0-9.:%\-]{2,80}\])(?::[0-9]{0,5})?")
forwarded_values = st.one_of(
    latin1,
    st.tuples(st.sampled_from(["for=1.2.3.4;", "", "by=x;", "For=a, "]),
              st.sampled_from(["host=", 'host="', "Host=", "proto=", "PROTO="]),
              st.one_of(latin1, st.sampled_from(["evil.example\r\nX: y", "a.example:443", "https", "http", "ftp"])),
              st.sampled_from(["", '"', ";proto=https", ", host=b"])).map("".join),
)


@fast(500)
@given(st.sampled_from(["http", "https", "ws", "wss", "weird"]), st.one_of(st.none(), latin1),
       st.dictionaries(st.sampled_from(["x-forwarded-host", "x-forwarded-proto", "forwarded"]), forwarded_values),
       st.booleans())
@example("http", "[", {}, False)
@example("http", "a:b:c", {}, False)
def test_forwarded_headers_give_a_safe_origin(scheme, host, headers, behind_proxy):
    tried("forwarded headers")
    proto, origin_host = grammar.request_origin(scheme, host, headers, behind_proxy)
    assert proto in ("http", "https")
    assert HOST.fullmatch(origin_host) and origin_host.isascii()
    if not behind_proxy:
        assert proto == ("https" if scheme in ("https", "wss") else "http")
    url = grammar.upload_url(proto, origin_host, "/files/", "abc")
    parts = urllib.parse.urlsplit(url)  # regression: Host "[" made a Location no URL parser accepts
    assert FIELD_VALUE.fullmatch(url) and parts.netloc == origin_host and parts.path == "/files/abc"


@fast(100)
@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}(:[0-9]{1,5})?", fullmatch=True),
       st.sampled_from(["http", "https"]))
def test_forwarded_host_is_used_behind_a_proxy(host, proto):
    tried("forwarded headers")
    got = grammar.request_origin("http", "internal", {"x-forwarded-host": host, "x-forwarded-proto": proto}, True)
    default_port = ":80" if proto == "http" else ":443"
    assert got == (proto, host.removesuffix(default_port))
    got = grammar.request_origin("http", "internal", {"forwarded": f'for=1.2.3.4;host="{host}";proto={proto}'}, True)
    assert got[0] == proto and host.startswith(got[1])


# -- Range -------------------------------------------------------------------------------------------------------


@fast(500)
@given(st.one_of(latin1, st.tuples(st.sampled_from(["bytes=", "Bytes = ", "items=", "bytes=-", ""]),
                                   st.one_of(number_like(), st.just("")), st.sampled_from(["-", "", ",", "-,"]),
                                   st.one_of(number_like(), st.just(""))).map("".join)),
       st.integers(min_value=1, max_value=10**12))
def test_range_is_within_the_content_or_416(header, size):
    tried("ranges (Range)")
    result = raises_client_error(lambda: grammar.parse_range(header, size))
    if isinstance(result, errors.TusError):
        assert result.status == 416 and result.headers["Content-Range"] == f"bytes */{size}"
    elif result is not None:
        first, last = result
        assert 0 <= first <= last < size


@fast(200)
@given(st.integers(min_value=1, max_value=10**9).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(0, size - 1), st.integers(0, 2 * size))))
def test_valid_ranges_round_trip(args):
    tried("ranges (Range)")
    size, first, last = args
    if last >= first:
        assert grammar.parse_range(f"bytes={first}-{last}", size) == (first, min(last, size - 1))
    assert grammar.parse_range(f"bytes={first}-", size) == (first, size - 1)
    assert grammar.parse_range(f"bytes=-{last + 1}", size) == (max(0, size - last - 1), size - 1)


@fast(300)
@given(st.dictionaries(st.sampled_from(["if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
                                        "if-range"]),
                       st.one_of(latin1, st.sampled_from(["*", 'W/"1-2"', "Mon, 01 Jan 0001 00:00:00 -0000",
                                                          "Fri, 31 Dec 9999 23:59:59 +2359", "Tue, 32 Foo 2020"]))),
       st.floats(min_value=0, max_value=4e9))
def test_conditional_headers_never_fail(headers, mtime):
    tried("conditional requests (If-*)")
    etag = grammar.entity_tag(10, mtime)
    assert grammar.check_preconditions(headers, etag, mtime) in (None, 304, 412)
    assert grammar.range_applies(headers, etag, mtime) in (True, False)


# -- download headers: nothing from metadata reaches a header unescaped -----------------------------------------


def disposition_filename(disposition: str) -> tuple[str, str | None]:
    """(the quoted ASCII fallback, the decoded ``filename*``) of a Content-Disposition we built."""
    match = re.fullmatch(r"""(?:inline|attachment); filename="([^"\\]*)"(?:; filename\*=UTF-8''([A-Za-z0-9%\-._~]*))?""",
                         disposition)
    assert match, disposition
    extended = urllib.parse.unquote(match.group(2), errors="strict") if match.group(2) is not None else None
    return match.group(1), extended


@fast(600)
@given(st.fixed_dictionaries({}, optional={
    "filename": st.one_of(unicode_text, latin1, with_surrogates,
                          st.sampled_from(['a"b.txt', "a\r\nSet-Cookie: x=1", "résumé.pdf", "../../etc/passwd",
                                           "a\\b", "日本語.txt", "x;filename=evil.exe", ""])),
    "filetype": st.one_of(latin1, unicode_text, st.sampled_from(
        ["text/plain", "text/plain\r\n;a=b", "text/plain\n", "image/png; q=\"1\"", "text/html", "a/b;c", "a/b\t;c=d",
         "text/plain; charset=utf-8\r\nSet-Cookie: x=1", "image/svg+xml", "TEXT/PLAIN", "text/plain;\x0bx=y"])),
}))
@example({"filetype": "text/plain\r\n;a=b"})  # regression: \s in the media-type pattern let CR/LF through
@example({"filename": "\ud800.txt"})  # regression: lone surrogate (hook metadata) raised UnicodeEncodeError
def test_download_headers_are_safe(meta):
    tried("download headers (Content-Type, Content-Disposition)")
    content_type, disposition = download_headers(meta)
    for value in (content_type, disposition):
        assert value.isascii() and FIELD_VALUE.fullmatch(value)
        value.encode("latin-1")
    if content_type != "application/octet-stream":
        assert re.fullmatch(rf"{TOKEN.pattern}/{TOKEN.pattern}(?:[ \t;].*)?", content_type)
        assert content_type == meta["filetype"].strip()
    kind = disposition.split(";")[0]
    assert kind in ("inline", "attachment")
    if kind == "inline":
        assert content_type.split(";")[0].strip().lower() in INLINE_MEDIA_TYPES
    if "filename" not in meta:
        assert disposition == kind
        return
    fallback, extended = disposition_filename(disposition)
    assert len(fallback) == len(meta["filename"])
    name = meta["filename"]
    if extended is None:
        assert fallback == name
    elif not any("\ud800" <= ch <= "\udfff" for ch in name):
        assert extended == name  # RFC 6266 / 5987: the exact name survives


# -- the app: hostile header values never make a 5xx ---------------------------------------------------------------

Headers = list[tuple[bytes, bytes]]


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    headers: Headers,
    body: bytes | list[bytes] = b"",
    content_length: bool = True,
    allow_500: bool = False,
    chunk_delay: float = 0,
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app: exact header bytes (repeats and non-ASCII included), the body in
    the given chunks with a pause between them (so concurrent requests interleave), every response header checked
    to be something an HTTP server could send."""
    chunks = [body] if isinstance(body, bytes) else list(body)
    total = sum(len(c) for c in chunks)
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if not messages:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(chunk_delay)
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a real server waits for the next request instead
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    head = [(b"host", b"tus.test")] + list(headers)
    if content_length:
        head.append((b"content-length", str(total).encode()))
    elif total:
        head.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "root_path": "", "query_string": b"",
        "headers": head, "client": ("127.0.0.1", 1234), "server": ("tus.test", 80),
    }
    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    response_headers: dict[str, str] = {}
    for name, value in start["headers"]:
        assert TOKEN.fullmatch(name.decode("latin-1")), name
        assert FIELD_VALUE.fullmatch(value.decode("latin-1")), (name, value)
        response_headers[name.decode("latin-1")] = value.decode("latin-1")
    content = b"".join(m.get("body", b"") for m in sent[1:])
    status = start["status"]
    assert status < 500 or status == 501 or allow_500, (status, content)
    if status >= 400 and method != "HEAD":
        assert content.startswith(b"ERR_"), (status, content)
    return status, response_headers, content


class AppRunner:
    """A TusApp on a file store in a fresh directory, with an event loop kept for many examples."""

    def __init__(self, **config: Any) -> None:
        self.directory = tempfile.mkdtemp(prefix="pytusd-props-")
        self.loop = asyncio.new_event_loop()
        config.setdefault("locker", MemoryLocker())
        self.app = TusApp(Config(store=FileStore(os.path.join(self.directory, "data")), **config))

    def run(self, coroutine: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]

    def call(self, method: str, path: str, headers: Headers, body: bytes | list[bytes] = b"",
             content_length: bool = True) -> tuple[int, dict[str, str], bytes]:
        return self.run(asgi_call(self.app, method, path, headers, body, content_length))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            hooks = self.app.config.hooks
            if hooks is not None:
                self.run(hooks.drain())  # type: ignore[union-attr]
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def runner_factory():
    runners: list[AppRunner] = []

    def make(**config: Any) -> AppRunner:
        runners.append(AppRunner(**config))
        return runners[-1]

    yield make
    for runner in runners:
        runner.close()


def enc(value: str) -> bytes:
    """Header bytes: Latin-1 where it can (raw high bytes), else UTF-8 as a browser would send it."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


TUS_HEADER_NAMES = ["upload-length", "upload-defer-length", "upload-metadata", "upload-concat", "upload-checksum",
                    "upload-offset", "content-type", "tus-resumable", "upload-draft-interop-version",
                    "x-http-method-override", "x-forwarded-host", "x-forwarded-proto", "forwarded", "origin",
                    "x-request-id", "range", "if-none-match", "if-range", "upload-complete", "upload-incomplete",
                    "content-disposition", "trailer"]


def header_values() -> st.SearchStrategy[str]:
    return st.one_of(latin1, number_like(), metadata_headers(), forwarded_values,
                     st.sampled_from(["1.0.0", "1", "partial", "final;/files/x", "application/offset+octet-stream",
                                      "sha1 oXyaqmHoChv3HQ2FCvTluqmAC70=", "PATCH", "DELETE", "?1", "?0", "6", "²"]))


def random_headers() -> st.SearchStrategy[Headers]:
    return st.lists(st.tuples(st.sampled_from(TUS_HEADER_NAMES), header_values()), max_size=8).map(
        lambda pairs: [(name.encode(), enc(value)) for name, value in pairs])


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_app_answers_any_tus_headers_without_a_5xx(runner_factory, data):
    """Any mix of tus headers (repeated, non-ASCII, malformed) on any method: a tus answer, never a 5xx."""
    tried("app: random tus headers on every method")
    runner = _shared_runner(runner_factory, "fuzz")
    created = _shared_upload(runner)
    method = data.draw(st.sampled_from(["POST", "PATCH", "HEAD", "GET", "DELETE", "OPTIONS", "PUT"]))
    path = data.draw(st.sampled_from(["/files/", "/files", created, created + "/x", "/files/nope", "/files/../x",
                                      "/files/%2e%2e", "/files/a\x00b", "/files/é", "/"]))
    headers = [(b"tus-resumable", b"1.0.0")] if data.draw(st.booleans()) else []
    headers += data.draw(random_headers())
    body = data.draw(st.binary(max_size=30))
    runner.call(method, path, headers, body, content_length=data.draw(st.booleans()))  # asgi_call checks the answer


_RUNNERS: dict[str, AppRunner] = {}
_UPLOADS: dict[str, str] = {}


def _shared_runner(factory: Callable[..., AppRunner], name: str) -> AppRunner:
    """One app per test run for the fuzz examples (creating one per example costs more than the example)."""
    runner = _RUNNERS.get(name)
    if runner is None or runner.loop.is_closed():
        runner = _RUNNERS[name] = AppRunner(enable_experimental_protocol=True, behind_proxy=True, max_size=1000)
    return runner


def _shared_upload(runner: AppRunner) -> str:
    path = _UPLOADS.get(runner.directory)
    if path is None:
        status, headers, _ = runner.call("POST", "/files/", [(b"tus-resumable", b"1.0.0"), (b"upload-length", b"20")])
        assert status == 201
        path = _UPLOADS[runner.directory] = urllib.parse.urlsplit(headers["location"]).path
    return path


@pytest.fixture(scope="module", autouse=True)
def _close_shared_runners():
    yield
    for runner in _RUNNERS.values():
        runner.close()
    _RUNNERS.clear()


# -- the app: limits with clear errors ---------------------------------------------------------------------------

TUS = [(b"tus-resumable", b"1.0.0")]
PATCH_TYPE = [(b"content-type", b"application/offset+octet-stream")]


def test_limits_with_clear_errors(runner_factory):
    runner = runner_factory(max_metadata_size=100, max_metadata_pairs=3)

    def post(*extra: tuple[bytes, bytes]) -> tuple[int, bytes]:
        status, _, body = runner.call("POST", "/files/", TUS + list(extra))
        return status, body

    # Upload-Length beyond int64, signs, duplicates.
    assert post((b"upload-length", b"9223372036854775808"))[1].startswith(b"ERR_INVALID_UPLOAD_LENGTH")
    assert post((b"upload-length", b"9223372036854775807"))[0] == 201  # no --max-size: int64 is the bound
    for value in (b"+5", b"-5", b"5.0", b"0x5", b"\xb9", b"\xef\xbc\x95"):
        status, body = post((b"upload-length", value))
        assert (status, body) == (400, b"ERR_INVALID_UPLOAD_LENGTH: Upload-Length is missing or invalid\n")
    assert post((b"upload-length", b"5"), (b"upload-length", b"5"))[1].startswith(b"ERR_INVALID_UPLOAD_LENGTH")
    # Metadata: size and pairs (431), invalid base64, duplicate keys, non-ASCII keys (400).
    assert post((b"upload-length", b"1"), (b"upload-metadata", b"a YQ==,b Yg==,c Yw=="))[0] == 201
    status, body = post((b"upload-length", b"1"), (b"upload-metadata", b"a YQ==,b Yg==,c Yw==,d ZA=="))
    assert (status, body[:23]) == (431, b"ERR_METADATA_TOO_LARGE:")
    status, body = post((b"upload-length", b"1"), (b"upload-metadata", b"a " + b"A" * 100))
    assert (status, body[:23]) == (431, b"ERR_METADATA_TOO_LARGE:")
    for meta in (b"a !!!", b"a YQ", b"a YQ==,a Yg==", b"\xe9 YQ==", b"a YQ== b"):
        status, body = post((b"upload-length", b"1"), (b"upload-metadata", meta))
        assert (status, body[:21]) == (400, b"ERR_INVALID_METADATA:"), meta
    # Two Upload-Metadata headers are one list (RFC 9110): fine unless a key repeats.
    assert post((b"upload-length", b"1"), (b"upload-metadata", b"a YQ=="), (b"upload-metadata", b"b Yg=="))[0] == 201
    assert post((b"upload-length", b"1"), (b"upload-metadata", b"a YQ=="), (b"upload-metadata", b"a Yg=="))[0] == 400
    # Duplicate tus headers on PATCH: each is a 400, nothing is written.
    status, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-length", b"4")])
    url = urllib.parse.urlsplit(headers["location"]).path
    patch = TUS + PATCH_TYPE
    for extra, code in (
        ([(b"upload-offset", b"0"), (b"upload-offset", b"0")], b"ERR_INVALID_OFFSET"),
        ([(b"upload-offset", b"0")] + PATCH_TYPE, b"ERR_INVALID_CONTENT_TYPE"),
        ([(b"upload-offset", b"0"), (b"upload-checksum", b"sha1 oXyaqmHoChv3HQ2FCvTluqmAC70="),
          (b"upload-checksum", b"sha1 oXyaqmHoChv3HQ2FCvTluqmAC70=")], b"ERR_INVALID_CHECKSUM"),
        ([(b"upload-offset", b"\xb2")], b"ERR_INVALID_OFFSET"),
    ):
        status, _, body = runner.call("PATCH", url, patch + extra, b"data")
        assert status == 400 and body.startswith(code), (extra, body)
    status, headers, _ = runner.call("HEAD", url, TUS)
    assert headers["upload-offset"] == "0"
    # Tus-Resumable twice is not 1.0.0.
    status, _, body = runner.call("POST", "/files/", TUS + TUS + [(b"upload-length", b"1")])
    assert status == 412 and body.startswith(b"ERR_UNSUPPORTED_VERSION")


def test_interop_version_superscript_is_not_a_500(runner_factory):
    """Regression: ``Upload-Draft-Interop-Version: ²`` (one Latin-1 byte) made int() raise: 500 on any request."""
    runner = runner_factory(enable_experimental_protocol=True)
    status, _, body = runner.call("POST", "/files/", TUS + [(b"upload-draft-interop-version", b"\xb2"),
                                                            (b"upload-length", b"1")])
    assert status == 201, body


def test_filetype_with_line_break_is_not_reflected(runner_factory):
    """Regression: a ``filetype`` of ``text/plain\\r\\n;a=b`` passed the media-type check and went into Content-Type
    with its CR/LF (uvicorn then refused to send the response)."""
    runner = runner_factory()
    meta = "filetype " + base64.b64encode(b"text/plain\r\n;a=b").decode() + ",filename " + base64.b64encode(
        b'a"\r\nb.txt').decode()
    status, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-length", b"2"), (b"upload-metadata",
                                                                                          meta.encode())])
    url = urllib.parse.urlsplit(headers["location"]).path
    runner.call("PATCH", url, TUS + PATCH_TYPE + [(b"upload-offset", b"0")], b"hi")
    status, headers, body = runner.call("GET", url, [])
    assert status == 200 and body == b"hi"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == "attachment; filename=\"a___b.txt\"; filename*=UTF-8''a%22%0D%0Ab.txt"


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(meta=st.dictionaries(st.sampled_from(["filename", "filetype", "name"]), st.one_of(unicode_text, latin1),
                            max_size=3))
def test_downloads_of_any_metadata_send_safe_headers(runner_factory, meta):
    tried("download headers (Content-Type, Content-Disposition)")
    runner = _shared_runner(runner_factory, "downloads")
    header = grammar.serialize_metadata(meta)
    status, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-length", b"0"),
                                                               (b"upload-metadata", header.encode())])
    assert status == 201
    url = urllib.parse.urlsplit(headers["location"]).path
    status, headers, _ = runner.call("HEAD", url, TUS)
    assert grammar.parse_metadata(headers.get("upload-metadata", ""), strict=True) == meta
    status, headers, _ = runner.call("GET", url, [])  # asgi_call checks every header
    assert status == 200 and headers["content-type"] == download_headers(meta)[0]


# -- the app: a deferred-length upload cannot grow past --max-size (tusd lets it) -------------------------------


@settings(max_examples=examples(80), deadline=None, suppress_health_check=list(HealthCheck))
@given(max_size=st.integers(min_value=1, max_value=64),
       steps=st.lists(st.tuples(st.binary(max_size=40), st.booleans(), st.one_of(st.none(), st.integers(0, 80))),
                      min_size=1, max_size=6))
def test_deferred_length_never_exceeds_max_size(runner_factory, max_size, steps):
    tried("app: deferred length vs --max-size")
    runner = AppRunner(max_size=max_size)
    try:
        status, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-defer-length", b"1")])
        assert status == 201
        url = urllib.parse.urlsplit(headers["location"]).path
        stored = b""
        size: int | None = None
        for chunk, send_length, declare in steps:
            extra = [(b"upload-offset", str(len(stored)).encode())]
            if size is not None and len(stored) == size:  # complete: answered at once, the body is not read (tusd)
                status, headers, body = runner.call("PATCH", url, TUS + PATCH_TYPE + extra, chunk, send_length)
                assert status == 204 and headers["upload-offset"] == str(size)
                continue
            if declare is not None and size is None:
                extra.append((b"upload-length", str(declare).encode()))
            status, headers, body = runner.call("PATCH", url, TUS + PATCH_TYPE + extra, chunk, send_length)
            if declare is not None and size is None:
                if declare < len(stored):
                    assert status == 400 and body.startswith(b"ERR_INVALID_UPLOAD_LENGTH")
                    continue
                if declare > max_size:
                    assert status == 413 and body.startswith(b"ERR_MAX_SIZE_EXCEEDED")
                    continue
                size = declare
            limit = (size if size is not None else max_size) - len(stored)
            if len(chunk) <= limit:
                assert status == 204, body
                stored += chunk
            elif send_length:
                assert status == 413, body  # refused before reading: nothing stored
            else:
                assert status == 413, body  # the allowed part is stored, the rest refused
                stored += chunk[:limit]
            assert len(stored) <= max_size
            status, headers, _ = runner.call("HEAD", url, TUS)
            assert int(headers["upload-offset"]) == len(stored) <= max_size
        status, _, body = runner.call("GET", url, [])
        assert body == stored
    finally:
        runner.close()


def test_hash_of_known_value():
    # The fixed digest used in header_values() is sha1("data"), so some fuzzed PATCHes carry a right checksum.
    assert base64.b64encode(hashlib.sha1(b"data").digest()).decode() == "oXyaqmHoChv3HQ2FCvTluqmAC70="


@fast(200)
@given(st.one_of(latin1, st.sampled_from(["https://app.example", "http://[::1]:8080", "null", "https://a.example\x1f",
                                          "https://a b", "file://", "app.example"])))
@example("\x1f")  # regression: any Origin was reflected in Access-Control-Allow-Origin, control characters included
def test_only_serialized_origins_are_reflected(origin):
    tried("forwarded headers")
    if grammar.is_origin(origin):
        assert origin.isascii() and FIELD_VALUE.fullmatch(origin) and " " not in origin


# -- file hooks: never a shell, and output that is not JSON is a failed hook -------------------------------------


def hook_script(directory: str, name: str, body: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o755)
    return path


SHELL_TEXT = st.text(alphabet=st.sampled_from(list("$`;|&<>(){}[]'\"\\*?!~#%^\n\t =") + ["a", "é", "x"]), max_size=25)


def test_file_hooks_never_see_metadata_through_a_shell(runner_factory):
    from pytusd.hooks import FileHookBackend, Hooks

    hooks_dir = tempfile.mkdtemp(prefix="pytusd-hooks-")
    marker = os.path.join(hooks_dir, "pwned")
    record = os.path.join(hooks_dir, "record.json")
    # The hook records its argv, its stdin and its environment's TUS_ID: the payload may arrive only on stdin.
    script = hook_script(hooks_dir, "pre-create", (
        f"#!{os.path.realpath(__import__('sys').executable)}\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv, 'stdin': json.load(sys.stdin), 'cwd': os.getcwd()}}, open({record!r}, 'w'))\n"
    ))
    runner = runner_factory(hooks=Hooks(FileHookBackend(hooks_dir), ("pre-create",)))
    try:
        @settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
        @given(meta=st.dictionaries(st.sampled_from(["filename", "name", "$(id)", "`id`"]),
                                    st.one_of(SHELL_TEXT, st.sampled_from([f"$(touch {marker})", f"`touch {marker}`",
                                                                           f"; touch {marker}", f"| touch {marker}",
                                                                           f"' && touch {marker} '"])),
                                    min_size=1, max_size=3))
        def check(meta):
            tried("file hooks: metadata with shell metacharacters")
            header = grammar.serialize_metadata(meta).encode()
            status, _, body = runner.call("POST", "/files/", TUS + [(b"upload-length", b"1"),
                                                                    (b"upload-metadata", header)])
            assert status == 201, body
            with open(record) as f:
                seen = json.load(f)
            assert seen["argv"] == [script]  # the hook's name is the executable; no arguments at all
            assert seen["stdin"]["Event"]["Upload"]["MetaData"] == meta
            assert os.path.realpath(seen["cwd"]) == os.path.realpath(hooks_dir)
            assert not os.path.exists(marker)

        check()
    finally:
        shutil.rmtree(hooks_dir, ignore_errors=True)


BAD_HOOK_OUTPUTS = [
    b"not json",
    b"{",
    b"[1, 2]",
    b"\xff\xfe\x00garbage",
    b'"a string"',
    b'{"HTTPResponse": {"StatusCode": "teapot"}}',
    b'{"HTTPResponse": {"StatusCode": 99}}',
    b'{"HTTPResponse": {"Header": {"X-A": "a\\u0001b"}}}',
    b'{"HTTPResponse": {"Header": {"X-A": "\\u20ac"}}}',  # cannot be sent: HTTP header values are Latin-1
    b'{"HTTPResponse": {"Header": {"Bad Name": "x"}}}',
    b'{"HTTPResponse": {"Header": {"X-A": "a\\r\\nSet-Cookie: x=1"}}}',
    b'{"ChangeFileInfo": {"MetaData": [1, 2]}}',
    b"{}" + b"x" * 200_000,
]


@pytest.mark.parametrize("output", BAD_HOOK_OUTPUTS, ids=lambda o: repr(o[:30]))
def test_hook_output_that_is_not_a_hook_response_fails_the_hook_cleanly(runner_factory, output):
    """A blocking hook answering garbage fails (counted), and the request gets a tus error (500, as tusd), never an
    exception out of the app or a response that cannot be sent; a notification hook's garbage changes nothing."""
    from pytusd.hooks import FileHookBackend, Hooks

    hooks_dir = tempfile.mkdtemp(prefix="pytusd-hooks-")
    try:
        with open(os.path.join(hooks_dir, "answer"), "wb") as f:
            f.write(output)
        for event in ("pre-create", "post-create"):
            hook_script(hooks_dir, event, "#!/bin/sh\ncat > /dev/null\ncat answer\n")
        hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create",))
        runner = runner_factory(hooks=hooks)
        status, headers, body = runner.run(
            asgi_call(runner.app, "POST", "/files/", TUS + [(b"upload-length", b"1")], allow_500=True)
        )
        assert status == 500 and body == b"ERR_INTERNAL_SERVER_ERROR: pre-create hook failed\n"
        assert "x-a" not in headers and "set-cookie" not in headers
        assert hooks.failures.get("pre-create") == 1
        hooks = Hooks(FileHookBackend(hooks_dir), ("post-create",))
        runner = runner_factory(hooks=hooks)
        assert runner.call("POST", "/files/", TUS + [(b"upload-length", b"1")])[0] == 201
        runner.run(hooks.drain())
        assert hooks.failures.get("post-create") == 1
    finally:
        shutil.rmtree(hooks_dir, ignore_errors=True)


# -- pytusd's own server: a request head past --max-header-size is a clean 431 -----------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exchange(port: int, request: bytes, chunk: int = 65536) -> bytes:
    """Send a raw request (stopping quietly if the server closes first) and read one response."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            for i in range(0, len(request), chunk):
                sock.sendall(request[i:i + chunk])
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                more = sock.recv(65536)
                if not more:
                    break
                data += more
        return data


def _length(data: bytes) -> int:
    match = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", data)
    return int(match.group(1)) if match else 0


@pytest.fixture
def pytusd_server(tmp_path):
    import subprocess
    import sys
    import time

    port = _free_port()
    log = open(tmp_path / "pytusd.log", "wb")  # noqa: SIM115 (closed after the server stopped)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytusd", "--host", "127.0.0.1", "--port", str(port), "--upload-dir",
         str(tmp_path / "data"), "--max-header-size", "65536", "--max-metadata-size", "2000",
         "--max-metadata-pairs", "10", "--verbose=false"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "pytusd.log").read_text()
            try:
                _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    text = (tmp_path / "pytusd.log").read_text(errors="replace")
    assert "Traceback" not in text and "Exception" not in text, text


def test_server_answers_oversized_heads_with_431(pytusd_server):
    import importlib.util

    port = pytusd_server
    post = b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 3\r\n"
    too_large = b"431 Request Header Fields Too Large" if importlib.util.find_spec("httptools") else b"400 Bad Request"
    for head in (
        post + b"X-Pad: " + b"p" * 200_000 + b"\r\n\r\n",  # one huge field
        post + b"".join(b"X-%d: y\r\n" % i for i in range(20_000)) + b"\r\n",  # many small ones
        post + b"X-Pad: " + b"p" * 10_000_000 + b"\r\n\r\n",  # the server stops reading long before the end
        b"GET /files/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a huge request line
    ):
        answer = _exchange(port, head)
        assert answer == b"" or too_large in answer.split(b"\r\n")[0], answer[:200]
        if answer and too_large.startswith(b"431"):
            assert answer.endswith(b"\r\n\r\nERR_HEADERS_TOO_LARGE: the request line and header fields may take "
                                   b"65536 bytes at most\n")
    # Metadata past --max-metadata-size / --max-metadata-pairs, within the head limit: the app's 431.
    for meta in (b"k " + b"QUFB" * 1000, b",".join(b"k%d" % i for i in range(11))):
        answer = _exchange(port, post + b"Upload-Metadata: " + meta + b"\r\n\r\n")
        assert b" 431 " in answer.split(b"\r\n")[0] and b"\r\n\r\nERR_METADATA_TOO_LARGE: " in answer, answer
    # A head just under the limit and a large body still go through: only the head is counted.
    body = os.urandom(3_000_000)
    answer = _exchange(port, b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 3000000\r\n"
                             b"Content-Type: application/offset+octet-stream\r\nContent-Length: 3000000\r\nX-Pad: "
                             + b"p" * 60_000 + b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 201 ") and b"\r\nupload-offset: 3000000\r\n" in answer, answer[:300]
    location = re.search(rb"\r\nlocation: http://x(/files/[0-9a-f]+)\r\n", answer).group(1)  # type: ignore[union-attr]
    answer = _exchange(port, b"GET " + location + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.endswith(body)
    # Bytes that are not ASCII in the request line, a Latin-1 digit in a tus header: 400s, never a crash.
    assert _exchange(port, b"GET /files/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    answer = _exchange(port, post + b"Upload-Metadata: f\xe9 YQ==\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ERR_INVALID_METADATA" in answer
    answer = _exchange(port, b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: \xb2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ERR_INVALID_UPLOAD_LENGTH" in answer
