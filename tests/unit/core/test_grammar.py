"""Pure header rules (src/pytusd/grammar.py), named by checklist item where one applies."""

from __future__ import annotations

import base64

import pytest

from pytusd import errors
from pytusd.core import grammar
from pytusd.info import download_headers, is_valid_upload_id, new_upload_id


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("value", ["0", "1", "9223372036854775807", "007"])
def test_p06_non_negative_integers_parse(value):
    assert grammar.parse_non_negative_int(value) == int(value)


@pytest.mark.parametrize("value", [None, "", "-1", "+1", "1.5", " 1", "1e3", "9223372036854775808", "0x10", "１"])
def test_p06_anything_else_is_rejected(value):
    assert grammar.parse_non_negative_int(value) is None
    with pytest.raises(errors.TusError) as info:
        grammar.parse_offset(value)
    assert info.value.code == "ERR_INVALID_OFFSET" and info.value.status == 400


def test_p24_creation_length():
    assert grammar.parse_creation_length("42", None, True) == (42, False)
    assert grammar.parse_creation_length(None, "1", True) == (0, True)
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length(None, None, True)
    assert info.value.code == "ERR_INVALID_UPLOAD_LENGTH"


def test_p25_defer_length_other_than_1():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length(None, "2", True)
    assert info.value.code == "ERR_INVALID_UPLOAD_LENGTH_DEFER" and info.value.status == 400


def test_p24_both_length_headers_are_ambiguous():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length("5", "1", True)
    assert info.value.code == "ERR_AMBIGUOUS_UPLOAD_LENGTH"


def test_p33_defer_without_store_support_is_501():
    with pytest.raises(errors.TusError) as info:
        grammar.parse_creation_length(None, "1", False)
    assert info.value.status == 501


def test_p29_metadata_parsing_follows_tusd():
    header = f"filename {b64('a b.txt')}, empty,bad !!!notbase64, dup {b64('1')},dup {b64('2')}, three a b,  , "
    assert grammar.parse_metadata(header) == {"filename": "a b.txt", "empty": "", "dup": "2"}


def test_p29_empty_metadata_header_means_none():
    assert grammar.parse_metadata("") == {}
    assert grammar.parse_metadata(None) == {}


def test_p29_metadata_value_not_utf8_is_dropped():
    raw = base64.b64encode(b"\xff\xfe").decode()
    assert grammar.parse_metadata(f"k {raw},ok {b64('x')}") == {"ok": "x"}


def test_p31_metadata_round_trip():
    meta = {"filename": "résumé.pdf", "empty": "", "type": "application/pdf"}
    assert grammar.parse_metadata(grammar.serialize_metadata(meta)) == meta


@pytest.mark.parametrize(
    "upload_id",
    ["abc", "0123456789abcdef0123456789abcdef", "a/b", "a.b", "x+y", "a~b_c-d"],
)
def test_valid_ids(upload_id):
    assert is_valid_upload_id(upload_id)


@pytest.mark.parametrize(
    "upload_id",
    ["", "..", ".", "../x", "a/../b", "a/./b", "/abs", "a/", "a//b", "a\x00b", "a\\b", "a b", "x" * 501, "é"],
)
def test_ids_that_could_escape_are_invalid(upload_id):
    assert not is_valid_upload_id(upload_id)


def test_new_ids_are_128_bit_hex():
    ids = {new_upload_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


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
    ("filetype", "content_type", "disposition"),
    [
        ("image/png", "image/png", "inline"),
        ("text/plain; charset=utf-8", "text/plain; charset=utf-8", "inline"),
        ("text/html", "text/html", "attachment"),
        ("image/svg+xml", "image/svg+xml", "attachment"),
        ("not a type", "application/octet-stream", "attachment"),
        ("text/plain\r\nSet-Cookie: x=y", "application/octet-stream", "attachment"),
    ],
)
def test_download_type_allow_list(filetype, content_type, disposition):
    assert download_headers({"filetype": filetype}) == (content_type, disposition)


def test_p32_filename_cannot_inject_headers():
    ctype, disposition = download_headers({"filename": 'a"b\\c\r\nSet-Cookie: x=1;.txt'})
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.startswith('attachment; filename="a_b_c__Set-Cookie: x=1;.txt"')
    assert "filename*=UTF-8''a%22b%5Cc%0D%0ASet-Cookie%3A%20x%3D1%3B.txt" in disposition


def test_unicode_filename_gets_rfc5987_form():
    _, disposition = download_headers({"filename": "résumé.pdf"})
    assert disposition == "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    disposition.encode("latin-1")


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


def test_errors_are_fresh_copies():
    first, second = errors.ERR_UPLOAD_NOT_FOUND(), errors.ERR_UPLOAD_NOT_FOUND("gone")
    assert first is not second and first.body == "ERR_UPLOAD_NOT_FOUND: no upload at this URL\n"
    assert second.body == "ERR_UPLOAD_NOT_FOUND: gone\n" and second.status == 404
