"""pytusd.errors: the catalogue of tusd's codes, and the one way errors are told apart (TusError.is_)."""

from __future__ import annotations

from pytusd import errors


def test_an_error_is_its_template_whatever_its_message_status_or_headers():
    raised = errors.ERR_UPLOAD_NOT_FOUND("no upload abc", status=410, headers={"X": "y"})
    assert raised.is_(errors.ERR_UPLOAD_NOT_FOUND)
    assert raised.is_(errors.ERR_UPLOAD_EXPIRED, errors.ERR_UPLOAD_NOT_FOUND)
    assert not raised.is_(errors.ERR_UPLOAD_EXPIRED)
    assert not raised.is_()


def test_every_code_of_the_catalogue_is_told_apart_from_every_other():
    catalogue = [value for name, value in vars(errors).items() if name.startswith("ERR_")]
    assert len(catalogue) > 20
    for one in catalogue:
        assert one().is_(one)
        assert [other for other in catalogue if one.is_(other)] == [one], one.code


def test_errors_are_fresh_copies():
    first, second = errors.ERR_UPLOAD_NOT_FOUND(), errors.ERR_UPLOAD_NOT_FOUND("gone")
    assert first is not second and first.body == "ERR_UPLOAD_NOT_FOUND: no upload at this URL\n"
    assert second.body == "ERR_UPLOAD_NOT_FOUND: gone\n" and second.status == 404
