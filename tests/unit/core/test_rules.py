"""Upload rules: declarative checks at creation (Fireboom's upload profiles)."""

from __future__ import annotations

import base64
import json

import pytest

from pytusd.core.rules import UploadRules

from tests.conftest import TUS, create, patch


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


@pytest.fixture
def ruled(client_factory):
    rules = UploadRules(
        max_size=100,
        allowed_types=["image/*", "application/pdf"],
        allowed_extensions=[".png", "pdf"],
        required_metadata=["filename"],
        metadata_schema={"type": "object", "properties": {"owner": {"type": "string", "pattern": "^[a-z]+$"}},
                         "required": ["owner"]},
    )
    return client_factory(rules=rules, max_size=1000)


async def post(client, length="10", **metadata):
    return await client.post("/files/", headers={**TUS, "Upload-Length": length, "Upload-Metadata": meta(**metadata)})


async def test_upload_that_keeps_the_rules(ruled):
    r = await post(ruled, filename="cat.PNG", filetype="image/png", owner="ann")
    assert r.status_code == 201


@pytest.mark.parametrize(
    ("length", "metadata", "status", "rule"),
    [
        ("101", {"filename": "a.png", "filetype": "image/png", "owner": "ann"}, 413, "max_size"),
        ("10", {"filetype": "image/png", "owner": "ann"}, 400, "required_metadata"),
        ("10", {"filename": "a.png", "filetype": "text/html", "owner": "ann"}, 400, "allowed_types"),
        ("10", {"filename": "a.png", "owner": "ann"}, 400, "allowed_types"),
        ("10", {"filename": "a.exe", "filetype": "application/pdf", "owner": "ann"}, 400, "allowed_extensions"),
        ("10", {"filename": "a.pdf", "filetype": "application/pdf"}, 400, "metadata_schema"),
        ("10", {"filename": "a.pdf", "filetype": "application/pdf", "owner": "Ann1"}, 400, "metadata_schema"),
    ],
)
async def test_violations_name_the_rule(ruled, upload_dir, length, metadata, status, rule):
    r = await post(ruled, length, **metadata)
    assert r.status_code == status and f"upload rule {rule}" in r.text
    assert not upload_dir.exists() or list(upload_dir.iterdir()) == []


async def test_size_rule_bounds_deferred_uploads(client_factory):
    client = client_factory(rules=UploadRules(max_size=4))
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await patch(client, url, 0, b"0123456")
    assert r.status_code == 413
    r = await patch(client, url, 0, b"01", **{"Upload-Length": "9"})
    assert r.status_code == 413


def test_rules_from_a_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"max_size": 5, "allowed_types": ["video/*"]}))
    assert UploadRules.from_file(path) == UploadRules(max_size=5, allowed_types=["video/*"])
    path.write_text(json.dumps({"max_bytes": 5}))
    with pytest.raises(ValueError, match="max_bytes"):
        UploadRules.from_file(path)
    with pytest.raises(Exception):
        UploadRules(metadata_schema={"type": "no-such-type"})
