"""pytusd.info without I/O: which upload IDs are valid (none can escape the storage), new IDs, and the
download headers an upload's metadata gives (type allow-list, a filename that cannot inject headers)."""

from __future__ import annotations

import pytest

from pytusd.info import UploadInfo, download_headers, is_valid_upload_id, new_upload_id


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


def test_filename_cannot_inject_headers():
    ctype, disposition = download_headers({"filename": 'a"b\\c\r\nSet-Cookie: x=1;.txt'})
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.startswith('attachment; filename="a_b_c__Set-Cookie: x=1;.txt"')
    assert "filename*=UTF-8''a%22b%5Cc%0D%0ASet-Cookie%3A%20x%3D1%3B.txt" in disposition


def test_unicode_filename_gets_rfc5987_form():
    _, disposition = download_headers({"filename": "résumé.pdf"})
    assert disposition == "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    disposition.encode("latin-1")


def test_replace_changes_each_field_as_dataclasses_replace_does():
    """UploadInfo.replace is spelled out for speed: every field, in order, changes alone and nothing else."""
    import dataclasses

    base = UploadInfo(id="a", size=10, offset=1, metadata={"k": "v"}, storage={"Type": "filestore"})
    values = {
        "id": "b", "size": 20, "size_is_deferred": True, "offset": 5, "metadata": {"x": "y"}, "is_partial": True,
        "is_final": True, "partial_uploads": ("p1",), "storage": {"Type": "s3store"},
    }
    assert set(values) == {field.name for field in dataclasses.fields(UploadInfo)}
    for name, value in values.items():
        assert base.replace(**{name: value}) == dataclasses.replace(base, **{name: value})
    with pytest.raises(TypeError):
        base.replace(bogus=1)
