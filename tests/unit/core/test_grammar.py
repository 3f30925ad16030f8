"""Pure header rules (src/pytusd/core/grammar.py), one test per rule of the tus 1.0 specification and HTTP."""

from __future__ import annotations

import base64

import pytest

from pytusd import errors
from pytusd.core import grammar


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("value", ["0", "1", "9223372036854775807", "007"])
def test_non_negative_integers_parse(value):
    assert grammar.parse_non_negative_int(value) == int(value)


@pytest.mark.parametrize("value", [None, "", "-1", "+1", "1.5", " 1", "1e3", "9223372036854775808", "0x10", "１"])
def test_anything_else_is_rejected(value):
    assert grammar.parse_non_negative_int(value) is None
    with pytest.raises(errors.TusError) as info:
        grammar.parse_offset(value)
    assert info.value.code == "ERR_INVALID_OFFSET" and info.value.status == 400


def test_creation_length():
    assert grammar.parse_creation_length("42", None, True) == (42, False)
    assert grammar.parse_creation_length(None, "1", True) == (0, True)
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length(None, None, True)
    assert info.value.code == "ERR_INVALID_UPLOAD_LENGTH"


def test_defer_length_other_than_1():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length(None, "2", True)
    assert info.value.code == "ERR_INVALID_UPLOAD_LENGTH_DEFER" and info.value.status == 400


def test_both_length_headers_are_ambiguous():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length("5", "1", True)
    assert info.value.code == "ERR_AMBIGUOUS_UPLOAD_LENGTH"


def test_defer_without_store_support_is_501():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length(None, "1", False)
    assert info.value.status == 501


def test_metadata_parsing_follows_tusd():
    header = f"filename {b64('a b.txt')}, empty,bad !!!notbase64, dup {b64('1')},dup {b64('2')}, three a b,  , "
    assert grammar.parse_metadata(header) == {"filename": "a b.txt", "empty": "", "dup": "2"}


def test_empty_metadata_header_means_none():
    assert grammar.parse_metadata("") == {}
    assert grammar.parse_metadata(None) == {}


def test_metadata_value_not_utf8_is_dropped():
    raw = base64.b64encode(b"\xff\xfe").decode()
    assert grammar.parse_metadata(f"k {raw},ok {b64('x')}") == {"ok": "x"}


def test_metadata_round_trip():
    meta = {"filename": "résumé.pdf", "empty": "", "type": "application/pdf"}
    assert grammar.parse_metadata(grammar.serialize_metadata(meta)) == meta


def test_forwarded_headers_only_behind_proxy():
    headers = {"x-forwarded-host": "tus.example", "x-forwarded-proto": "https"}
    assert grammar.request_origin("http", "internal:8080", headers, False) == ("http", "internal:8080")
    assert grammar.request_origin("http", "internal:8080", headers, True) == ("https", "tus.example")


def test_forwarded_header_wins_and_default_ports_drop():
    headers = {"x-forwarded-host": "a.example", "forwarded": 'for=1.2.3.4;host="b.example:443";proto=https'}
    assert grammar.request_origin("http", "internal", headers, True) == ("https", "b.example")
    assert grammar.request_origin("http", "c.example:80", {}, True) == ("http", "c.example")


def test_odd_host_header_cannot_inject_into_location():
    assert grammar.request_origin("http", "evil.example/\r\nX: y", {}, False) == ("http", "localhost")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-4", (0, 4)),
        ("bytes=5-", (5, 9)),
        ("bytes=-3", (7, 9)),
        ("bytes=8-100", (8, 9)),
        ("bytes=0-1,3-4", None),
        ("items=0-1", None),
        ("bytes=5-2", None),
        ("garbage", None),
    ],
)
def test_range_parsing(header, expected):
    assert grammar.parse_range(header, 10) == expected


def test_range_past_the_end_is_416():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_range("bytes=10-", 10)
    assert info.value.status == 416 and info.value.headers["Content-Range"] == "bytes */10"


def test_preconditions():
    etag = grammar.entity_tag(10, 1_700_000_000.5)
    date = grammar.http_date(1_700_000_000)
    assert grammar.check_preconditions({"if-none-match": etag}, etag, 1_700_000_000.5) == 304
    assert grammar.check_preconditions({"if-none-match": '"other"'}, etag, 1_700_000_000.5) is None
    assert grammar.check_preconditions({"if-modified-since": date}, etag, 1_700_000_000.5) == 304
    assert grammar.check_preconditions({"if-match": '"other"'}, etag, 1_700_000_000.5) == 412
    assert grammar.check_preconditions({"if-match": etag}, etag, 1_700_000_000.5) is None
    assert grammar.range_applies({"if-range": etag}, etag, 1_700_000_000.5)
    assert not grammar.range_applies({"if-range": '"old"'}, etag, 1_700_000_000.5)


def test_cors_lists_keep_required_entries():
    merged = grammar.merge_header_lists("A, B", "b, C")
    assert merged == "A, B, C"
