"""Dates and numbers a client sends that no parser expects: a year of twenty digits in ``If-Modified-Since``
answered 500 (OverflowError). Every header pytusd turns into a date or a number is bounded before it is parsed and
either ignored (conditional dates, ranges, as RFC 9110 says) or answered with tusd's status and code, never 500.

In-process (``TusApp`` through httpx's ASGI transport, or a raw ASGI scope where httpx would refuse the bytes) for
every header, and through a real ``pytusd`` process for the dates.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytusd.core import grammar

from ..conftest import PATCH_TYPE, TUS, create, patch
from .conftest import asgi

DATE_HEADERS = ("If-Modified-Since", "If-Unmodified-Since", "If-Range")
HOSTILE_DATES = [
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",  # the review's: OverflowError in email.utils
    "Mon, 01 Jan " + "9" * 5000 + " 00:00:00 GMT",  # past int()'s 4,300-digit limit
    "Sat, 01 Jan 10000 00:00:00 GMT",
    "Mon, 01 Jan 0000 00:00:00 GMT",
    "Mon, 01 Jan 0001 00:00:00 -2359",
    "Fri, 31 Dec 9999 23:59:59 +2359",
    "Mon, 01 Jan 1970 00:00:00 +99999999999999999999",
    "Mon, 31 Feb 2021 00:00:00 GMT",
    "Mon, 01 Jan 2021 24:00:00 GMT",
    "Mon, 01 Jan 2021 23:59:60 GMT",
    "Sunday, 06-Nov-94 08:49:99 GMT",
    "Sun Nov 99 08:49:37 1994",
    "Sun, 06 Nov 1994 08:49:37 -0000",  # not GMT: email.utils read it as local time
    "Sun, 06 Nov 1994 08:49:37",
    "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits
    "1e309",
    "-1",
    "",
    "\x00",
    "x" * 100_000,
]


def test_valid_http_dates_in_every_form():
    expected = 784111777.0  # RFC 9110's example: Sun, 06 Nov 1994 08:49:37 GMT
    for value in ("Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
                  "  Sun, 06 Nov 1994 08:49:37 GMT "):
        assert grammar._parse_http_date(value) == expected, value
    assert grammar._parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT") == 253402300799.0
    assert grammar._parse_http_date("Mon, 01 Jan 0001 00:00:00 GMT") == -62135596800.0
    # A two-digit year is at most 50 years ahead: "94" is 1994, the current year's two digits are this year.
    this_year = time.gmtime().tm_year
    value = f"Friday, 01-Jan-{this_year % 100:02d} 00:00:00 GMT"
    assert time.gmtime(grammar._parse_http_date(value)).tm_year == this_year


@pytest.mark.parametrize("value", HOSTILE_DATES, ids=lambda v: repr(v[:40]))
def test_hostile_dates_are_ignored(value):
    assert grammar._parse_http_date(value) is None
    etag, mtime = grammar.entity_tag(5, 1_700_000_000.25), 1_700_000_000.25
    for name in ("if-modified-since", "if-unmodified-since"):
        assert grammar.check_preconditions({name: value}, etag, mtime) is None
    assert grammar.range_applies({"if-range": value}, etag, mtime) is False


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[A-Za-z]{3,9}, [0-9]{1,30} [A-Za-z]{3} [0-9]{1,30} [0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3} [A-Z+\-0-9]{1,25}",
                  fullmatch=True),
    st.from_regex(r"[A-Za-z]{3,9}, [0-9]{1,3}-[A-Za-z]{3}-[0-9]{1,5} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT", fullmatch=True),
))
def test_any_date_parses_or_is_ignored(value):
    parsed = grammar._parse_http_date(value)
    assert parsed is None or isinstance(parsed, float)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_http_dates_round_trip(timestamp):
    assert grammar._parse_http_date(grammar.http_date(timestamp)) == timestamp


# -- the in-process app: a GET with each hostile date ---------------------------------------------------------------


async def _finished(client: httpx.AsyncClient, data: bytes = b"hello") -> str:
    url = await create(client, len(data))
    assert (await patch(client, url, 0, data)).status_code == 204
    return url


async def test_get_with_hostile_dates_in_process(client):
    url = await _finished(client)
    for value in HOSTILE_DATES:
        encoded = value.encode("latin-1", "replace")
        for name in DATE_HEADERS:
            headers = [(name.encode(), encoded)] + ([(b"Range", b"bytes=0-0")] if name == "If-Range" else [])
            r = await client.get(url, headers=headers)
            # Ignored: the whole upload, as without the header (If-Range without a valid validator: no range).
            assert (r.status_code, r.content) == (200, b"hello"), (name, value[:40], r.status_code, r.text)
    # The same headers with valid dates still work.
    modified = (await client.get(url)).headers["last-modified"]
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    earlier = email.utils.formatdate(time.time() - 3600 * 24 * 400, usegmt=True)
    assert (await client.get(url, headers={"If-Modified-Since": later})).status_code == 304
    assert (await client.get(url, headers={"If-Unmodified-Since": earlier})).status_code == 412
    r = await client.get(url, headers={"If-Range": modified, "Range": "bytes=0-0"})
    assert (r.status_code, r.content) == (206, b"h")


# -- every other number a client sends ------------------------------------------------------------------------------

NOT_NUMBERS = ["", " ", "-1", "+1", "1.0", "1e3", "0x10", "1_000", " 7", "7 ", "\u0663", "\xb2", "NaN", "inf",
               "\x00", "1\t2", "9" * 20, "18446744073709551616", "9" * 5000, "1" * 100_000, "00000000000000000000001"]


def _tus_error(status: int, body: bytes) -> str:
    """The code of a tus error body ("ERR_CODE: message\\n")."""
    match = re.fullmatch(rb"(ERR_[A-Z_]+): [^\n]*\n", body)
    assert match, (status, body[:200])
    return match.group(1).decode()


def latin1(value: str) -> bytes:
    return value.encode("latin-1", "replace")


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=lambda v: repr(v[:24]))
async def test_numbers_in_tus_headers(client_factory, value):
    client = client_factory(enable_experimental_protocol=True)
    app = client.app
    raw = latin1(value)
    tus = [(b"tus-resumable", b"1.0.0")]
    # Upload-Length on creation: 400 ERR_INVALID_UPLOAD_LENGTH.
    status, _, body = await asgi(app, "POST", "/files/", tus + [(b"upload-length", raw)])
    assert (status, _tus_error(status, body)) == (400, "ERR_INVALID_UPLOAD_LENGTH")
    # Upload-Offset on PATCH: 400 ERR_INVALID_OFFSET.
    url = await create(client, 5)
    path = url.split("tus.test", 1)[1]
    patch_head = tus + [(b"content-type", b"application/offset+octet-stream"), (b"content-length", b"1")]
    status, _, body = await asgi(app, "PATCH", path, patch_head + [(b"upload-offset", raw)], b"x")
    assert (status, _tus_error(status, body)) == (400, "ERR_INVALID_OFFSET")
    # Upload-Length declared by a PATCH of a deferred upload: 400 ERR_INVALID_UPLOAD_LENGTH.
    deferred = await create(client, None, **{"Upload-Defer-Length": "1"})
    status, _, body = await asgi(app, "PATCH", deferred.split("tus.test", 1)[1],
                                 patch_head + [(b"upload-offset", b"0"), (b"upload-length", raw)], b"x")
    assert (status, _tus_error(status, body)) == (400, "ERR_INVALID_UPLOAD_LENGTH")
    # Range on GET: ignored, the whole upload (206 when what is left is a range of it all, "bytes=0-"), or 416 when
    # spaces around it leave a number past the end ("bytes= 7-").
    assert (await patch(client, url, 0, b"hello")).status_code == 204
    for spec in (b"bytes=" + raw + b"-", b"bytes=0-" + raw, b"bytes=-" + raw, raw):
        status, headers, body = await asgi(app, "GET", path, [(b"range", spec)])
        if status == 416:
            assert value.strip() == "7" and _tus_error(status, body) == "ERR_RANGE_NOT_SATISFIABLE"
            continue
        assert body == b"hello" and status in (200, 206), (spec[:40], status)
        assert status == 200 or headers["content-range"] == "bytes 0-4/5"
    # Content-Length of a creation with data: no body is taken on a length that is not one, never a 500.
    status, headers, body = await asgi(app, "POST", "/files/", tus + [
        (b"upload-length", b"3"), (b"content-type", b"application/offset+octet-stream"), (b"content-length", raw)],
        b"abc")
    assert status == 201 and headers["upload-offset"] in ("0", "3"), (status, body)
    # Upload-Draft-Interop-Version: not a version (once stripped of spaces), so the request is tus 1.0.
    status, headers, _ = await asgi(app, "POST", "/files/", tus + [(b"upload-length", b"1"),
                                                                    (b"upload-draft-interop-version", raw)])
    assert status == 201
    if value.strip() != "7":
        assert headers["tus-resumable"] == "1.0.0" and "upload-draft-interop-version" not in headers
    # X-Request-ID (a length, in effect): taken over when short and plain, else the server makes its own.
    status, headers, _ = await asgi(app, "HEAD", path, [(b"x-request-id", raw)])
    request_id = headers["x-request-id"]
    assert status == 200 and re.fullmatch(r"[A-Za-z0-9._:/+=@-]{1,128}", request_id), request_id[:40]
    if len(value.strip()) > 128 or not value.strip() or not value.isascii():
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)


HOSTILE_CHECKSUMS = [
    ("sha1 " + "A" * 100_000, "ERR_INVALID_CHECKSUM"),  # valid base64, absurdly long: bounded before decoding
    ("sha1 " + "A" * (grammar.MAX_CHECKSUM_LENGTH + 4), "ERR_INVALID_CHECKSUM"),
    ("sha1 ====", "ERR_INVALID_CHECKSUM"),
    ("sha1 ", "ERR_INVALID_CHECKSUM"),
    ("sha1 \xe9\xe9\xe9\xe9", "ERR_INVALID_CHECKSUM"),
    ("sha1 AAAA\x00", "ERR_INVALID_CHECKSUM"),
    ("sha1 " + " " * 10_000, "ERR_INVALID_CHECKSUM"),
    ("SHA1 AAAA", "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
    ("sha1" + "1" * 5000 + " AAAA", "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
    ("", "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
]


@pytest.mark.parametrize(("value", "code"), HOSTILE_CHECKSUMS, ids=lambda v: repr(v[:24]))
async def test_hostile_checksums(client, value, code):
    url = await create(client, 5)
    path = url.split("tus.test", 1)[1]
    status, _, body = await asgi(client.app, "PATCH", path, [
        (b"tus-resumable", b"1.0.0"), (b"content-type", b"application/offset+octet-stream"),
        (b"upload-offset", b"0"), (b"content-length", b"5"), (b"upload-checksum", latin1(value))], b"hello")
    assert (status, _tus_error(status, body)) == (400, code)
    assert (await client.head(url)).headers["upload-offset"] == "0"
    # The longest real digest still fits.
    digest = hashlib.sha512(b"hello").digest()
    r = await patch(client, url, 0, b"hello", **{"Upload-Checksum": "sha512 " + base64.b64encode(digest).decode()})
    assert r.status_code == 204


HOSTILE_METADATA = [
    ("filename " + "QUFB" * 20_000, 431, "ERR_METADATA_TOO_LARGE"),  # past --max-metadata-size, not decoded
    ("filename ====", 400, "ERR_INVALID_METADATA"),
    ("filename \xe9\xe9\xe9\xe9", 400, "ERR_INVALID_METADATA"),
    ("filename //79", 400, "ERR_INVALID_METADATA"),  # base64 of bytes that are not UTF-8
    ("filename YQ== b", 400, "ERR_INVALID_METADATA"),
    (",".join(f"k{i}" for i in range(300)), 431, "ERR_METADATA_TOO_LARGE"),
]


@pytest.mark.parametrize(("value", "status", "code"), HOSTILE_METADATA, ids=lambda v: repr(v)[:24])
async def test_hostile_metadata(client, value, status, code):
    answer, _, body = await asgi(client.app, "POST", "/files/", [
        (b"tus-resumable", b"1.0.0"), (b"upload-length", b"1"), (b"upload-metadata", latin1(value))])
    assert (answer, _tus_error(answer, body)) == (status, code)


@pytest.mark.parametrize("urls", ["http://[::1", "/files/%ff%fe", "/files/../../etc/passwd", "/files/" + "a" * 5000,
                                  "http://tus.test:99999999999999999999/files/x", "\x00"])
async def test_hostile_concat_urls(client, urls):
    status, _, body = await asgi(client.app, "POST", "/files/", [
        (b"tus-resumable", b"1.0.0"), (b"upload-concat", latin1("final;" + urls))])
    assert (status, _tus_error(status, body)) == (404, "ERR_UPLOAD_NOT_FOUND")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["upload-length", "upload-offset", "range", "upload-draft-interop-version", "x-request-id",
                        "upload-checksum", "if-modified-since", "if-unmodified-since", "if-range", "content-length"]),
       st.one_of(st.text(alphabet="0123456789 +-.,;=eExX:/", max_size=60),
                 st.integers(min_value=-(2**80), max_value=2**80).map(str),
                 st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
async def test_any_number_header_never_fails_the_server(tmp_path_factory, name, value):
    from ..conftest import make_app

    app = make_app(tmp_path_factory.mktemp("numbers"))
    create_status, headers, _ = await asgi(app, "POST", "/files/", [(b"tus-resumable", b"1.0.0"),
                                                                    (b"upload-length", b"5")])
    assert create_status == 201
    path = headers["location"].split("tus.test", 1)[1]
    raw = latin1(value)
    for method, extra, body in (
        ("POST", [(b"tus-resumable", b"1.0.0"), (b"upload-length", b"5")], b""),
        ("PATCH", [(b"tus-resumable", b"1.0.0"), (b"upload-offset", b"0"), (b"content-length", b"5"),
                   (b"content-type", b"application/offset+octet-stream")], b"hello"),
        ("GET", [(b"range", b"bytes=0-1")], b""),
        ("HEAD", [(b"tus-resumable", b"1.0.0")], b""),
    ):
        headers = [h for h in extra if h[0] != name.encode()] + [(name.encode(), raw)]
        status, _, answer = await asgi(app, method, "/files/" if method == "POST" else path, headers, body)
        assert status < 500, (method, name, value, status, answer[:200])
        if status >= 400 and method != "HEAD":
            _tus_error(status, answer)


# -- a real pytusd process: a GET of a finished upload with each hostile date --------------------------------------


@pytest.mark.e2e
def test_get_with_hostile_dates_in_a_real_process(pytusd_factory):
    server = pytusd_factory()
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"})
    url = r.headers["location"]
    assert httpx.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}, content=b"hello").status_code == 204
    with httpx.Client() as client:
        for value in HOSTILE_DATES:
            if not value.isascii() or value in ("", "\x00"):
                continue  # not what an HTTP client can send; the in-process test covers them
            for name in DATE_HEADERS:
                headers = {name: value, **({"Range": "bytes=0-0"} if name == "If-Range" else {})}
                r = client.get(url, headers=headers)
                assert (r.status_code, r.content) == (200, b"hello"), (name, value[:40], r.status_code)
        modified = client.get(url).headers["last-modified"]
        later = email.utils.formatdate(time.time() + 3600, usegmt=True)
        earlier = email.utils.formatdate(time.time() - 3600 * 24 * 400, usegmt=True)
        assert client.get(url, headers={"If-Modified-Since": later}).status_code == 304
        assert client.get(url, headers={"If-Unmodified-Since": earlier}).status_code == 412
        r = client.get(url, headers={"If-Range": modified, "Range": "bytes=1-2"})
        assert (r.status_code, r.content) == (206, b"el")
    log = server.log()
    assert "Traceback" not in log and "level=ERROR" not in log, log[-3000:]
    assert " -> 500 " not in log
