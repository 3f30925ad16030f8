"""Upload rules: declarative checks at creation (Fireboom's upload profiles)."""

from __future__ import annotations

import base64
import json
import pathlib

import httpx
import pytest

from pytusd.core import grammar
from pytusd.core import rules as rules_module
from pytusd.core.rules import UploadProfiles, UploadRules

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


# -- named profiles -------------------------------------------------------------------------------------------------

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "upload-profiles.json"


def profiles(**overrides):
    options = {
        "profiles": {
            "avatars": UploadRules(max_size=10, allowed_types=["image/*"], hooks=["post-finish"]),
            "documents": UploadRules(allowed_extensions=[".pdf"]),
            "tiny": UploadRules(max_size=3),
        },
        "default": "documents",
        **overrides,
    }
    return UploadProfiles(**options)


async def test_profile_chosen_by_metadata_is_enforced_and_stored(client_factory):
    client = client_factory(rules=profiles())
    r = await post(client, "5", profile="avatars", filetype="image/png")
    assert r.status_code == 201
    head = await client.head(r.headers["location"], headers=TUS)
    assert grammar.parse_metadata(head.headers["upload-metadata"])["profile"] == "avatars"
    r = await post(client, "11", profile="avatars", filetype="image/png")
    assert r.status_code == 413 and "upload rule max_size" in r.text
    r = await post(client, "5", profile="avatars", filetype="text/plain")
    assert r.status_code == 400 and r.text.startswith("ERR_UPLOAD_RULE_VIOLATED")


async def test_default_profile_and_unknown_profiles(client_factory, upload_dir):
    client = client_factory(rules=profiles())
    r = await post(client, "5", filename="a.pdf")
    assert r.status_code == 201
    head = await client.head(r.headers["location"], headers=TUS)
    assert grammar.parse_metadata(head.headers["upload-metadata"])["profile"] == "documents"
    assert (await post(client, "5", filename="a.png")).status_code == 400  # the default's rule
    r = await post(client, "5", profile="nonesuch")
    assert r.status_code == 400 and r.text.startswith("ERR_UNKNOWN_UPLOAD_PROFILE") and "nonesuch" in r.text
    without_default = client_factory(rules=profiles(default=""))
    r = await post(without_default, "5", filename="a.pdf")
    assert r.status_code == 400 and r.text.startswith("ERR_UNKNOWN_UPLOAD_PROFILE")


async def test_profile_by_mount_point_outranks_the_clients_field(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from tests.conftest import make_app

    app = make_app(tmp_path, rules=profiles(paths={"/avatars/": "avatars"}))
    web = Starlette(routes=[Mount("/avatars", app=app), Mount("/docs", app=app)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://tus.test") as client:
        r = await client.post("/avatars/files/", headers={**TUS, "Upload-Length": "5",
                                                          "Upload-Metadata": meta(profile="documents",
                                                                                  filetype="image/png")})
        assert r.status_code == 201 and r.headers["location"].startswith("http://tus.test/avatars/files/")
        head = await client.head(r.headers["location"], headers=TUS)
        assert grammar.parse_metadata(head.headers["upload-metadata"])["profile"] == "avatars"
        r = await client.post("/docs/files/", headers={**TUS, "Upload-Length": "5",
                                                       "Upload-Metadata": meta(filetype="image/png")})
        assert r.status_code == 400  # documents: .pdf only


async def test_pre_create_hook_chooses_the_profile(client_factory):
    async def hook(hook_type, payload):
        if hook_type == "pre-create":
            meta_data = payload["Event"]["Upload"]["MetaData"]
            return {"ChangeFileInfo": {"MetaData": {**meta_data, "profile": "tiny"}}}
        return {}

    client = client_factory(rules=profiles(), hooks=hook)
    r = await post(client, "5", filename="a.pdf")  # fine for the default, too long for the hook's choice
    assert r.status_code == 413 and "upload rule max_size" in r.text
    r = await post(client, "3", filename="a.pdf")
    assert r.status_code == 201
    head = await client.head(r.headers["location"], headers=TUS)
    assert grammar.parse_metadata(head.headers["upload-metadata"])["profile"] == "tiny"


async def test_profile_rules_and_hooks_hold_on_later_requests_and_after_a_restart(client_factory):
    seen = []

    async def hook(hook_type, payload):
        seen.append((hook_type, payload["Event"]["Upload"]["MetaData"].get("profile")))
        return {}

    client = client_factory(rules=profiles(), hooks=hook)
    url = await create(client, None, **{"Upload-Defer-Length": "1",
                                        "Upload-Metadata": meta(profile="avatars", filetype="image/gif")})
    r = await patch(client, url, 0, b"ab", **{"Upload-Length": "11"})  # the profile's 10 bytes, declared later
    assert r.status_code == 413
    restarted = client_factory(rules=profiles(), hooks=hook)  # the same folder, a new app
    r = await patch(restarted, url, 0, b"ab", **{"Upload-Length": "11"})
    assert r.status_code == 413
    r = await patch(restarted, url, 0, b"ab", **{"Upload-Length": "2"})
    assert r.status_code == 204
    await restarted.app.handlers.hooks.drain()
    # avatars run post-finish only; its creation ran no pre-create or post-create hook
    assert [event for event in seen if event[1] == "avatars"] == [("post-finish", "avatars")]
    gone = client_factory(rules=UploadProfiles({"documents": UploadRules()}, default="documents"))
    r = await patch(gone, url, 2, b"x")
    assert r.status_code == 400 and r.text.startswith("ERR_UNKNOWN_UPLOAD_PROFILE")


async def test_every_way_of_creating_gets_a_profile(client_factory):
    client = client_factory(rules=profiles(default="tiny"), enable_experimental_protocol=True)
    draft = await client.post("/files/", headers={"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1"},
                              content=b"four")
    assert draft.status_code == 413 and "upload rule max_size" in draft.text
    a = await create(client, 2, **{"Upload-Concat": "partial"})
    b = await create(client, 2, **{"Upload-Concat": "partial"})
    await patch(client, a, 0, b"ab")
    await patch(client, b, 0, b"cd")
    final = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert final.status_code == 413 and "upload rule max_size" in final.text


def test_profiles_from_the_example_file(tmp_path):
    loaded = rules_module.from_file(EXAMPLE)
    assert isinstance(loaded, UploadProfiles)
    assert set(loaded.profiles) == {"avatars", "documents", "videos"}
    assert loaded.default == "documents" and loaded.paths == {"/avatars/": "avatars"}
    assert loaded.profiles["avatars"].hooks == ["pre-create", "post-finish"]
    path = tmp_path / "bad.json"
    for bad, message in [({"profiles": {"a": {"max_bytes": 1}}}, "max_bytes"),
                         ({"profiles": {"a": {}}, "default_profile": "b"}, "b named but not defined"),
                         ({"profiles": {"a": {}}, "profile_paths": {"/x/": "c"}}, "c named but not defined"),
                         ({"profiles": {"a": {"hooks": ["pre-nothing"]}}}, "pre-nothing"),
                         ({"profiles": {}}, "at least one profile"),
                         ({"profiles": {"a": {}}, "extra": 1}, "extra")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            rules_module.from_file(path)
    assert isinstance(rules_module.from_file(_write(tmp_path, {"max_size": 1})), UploadRules)


def _write(tmp_path, data):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    return path
