"""One admission path: every way an upload comes into being passes the same rules, in the same order.

The attack: with a pre-create hook that rejects, a tus POST got 400 but an IETF-draft POST (interop 6, complete,
``Content-Type: text/html``) got 201 and its bytes were stored; ``--allowed-types``, a rejecting ``pre_create``
callback and the metadata limits were bypassed the same way. Here every creation path - tus POST, creation-with-
upload, a final made by concatenation, and a draft creation at every interop version - meets every admission rule,
and a refused upload leaves nothing in the store.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from pytusd.core.rules import UploadRules
from pytusd.errors import TusError
from pytusd.hooks import Hooks, PythonHookBackend

from ..conftest import PATCH_TYPE, TUS

DRAFT_VERSIONS = (3, 4, 5, 6, 7, 8)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def draft_complete(version: int) -> dict[str, str]:
    return {"Upload-Incomplete": "?0"} if version == 3 else {"Upload-Complete": "?1"}


Creator = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def tus_post(client: httpx.AsyncClient) -> httpx.Response:
    metadata = f"filename {b64('page.html')},filetype {b64('text/html')}"
    return await client.post("/files/", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": metadata})


async def tus_post_with_data(client: httpx.AsyncClient) -> httpx.Response:
    metadata = f"filename {b64('page.html')},filetype {b64('text/html')}"
    headers = {**TUS, **PATCH_TYPE, "Upload-Length": "5", "Upload-Metadata": metadata}
    return await client.post("/files/", headers=headers, content=b"<b>x</b>"[:5])


async def tus_final(client: httpx.AsyncClient) -> httpx.Response:
    """A final of two partials made while admission is open (the app's ``admission_open`` switch, below)."""
    client.app.admission_open = True  # type: ignore[attr-defined]
    urls = []
    for data in (b"<b>", b"x<"):
        r = await client.post("/files/", headers={**TUS, **PATCH_TYPE, "Upload-Length": str(len(data)),
                                                  "Upload-Concat": "partial"}, content=data)
        assert r.status_code == 201, r.text
        urls.append(r.headers["location"])
        client.app.setup_ids.add(r.headers["location"].rsplit("/", 1)[1])  # type: ignore[attr-defined]
    client.app.admission_open = False  # type: ignore[attr-defined]
    metadata = f"filename {b64('page.html')},filetype {b64('text/html')}"
    return await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls),
                                                 "Upload-Metadata": metadata})


def draft_post(version: int) -> Creator:
    async def create(client: httpx.AsyncClient) -> httpx.Response:
        headers = {"Upload-Draft-Interop-Version": str(version), **draft_complete(version),
                   "Content-Type": "text/html", "Content-Disposition": 'attachment; filename="page.html"'}
        return await client.post("/files/", headers=headers, content=b"<b>x</b>"[:5])

    create.__name__ = f"draft_v{version}"
    return create


CREATORS: list[Creator] = [tus_post, tus_post_with_data, tus_final, *(draft_post(v) for v in DRAFT_VERSIONS)]


def stored_uploads(upload_dir: Path) -> set[str]:
    return {name[: -len(".info")] for name in os.listdir(upload_dir) if name.endswith(".info")} if upload_dir.exists() else set()


async def rejecting_hook(hook_type: str, request: dict) -> dict | None:
    return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 418, "Body": "no html here"}}


async def rejecting_callback(event) -> None:
    raise TusError("ERR_UPLOAD_REJECTED", "the callback said no", 403)


RULES: dict[str, tuple[dict, int, str]] = {
    # name -> (Config overrides, expected status, expected text in the body)
    "pre-create hook": ({"hooks": Hooks(PythonHookBackend(rejecting_hook), ("pre-create",))}, 418, "no html here"),
    "pre_create callback": ({"pre_create": rejecting_callback}, 403, "ERR_UPLOAD_REJECTED"),
    "allowed types": ({"rules": UploadRules(allowed_types=("image/png",))}, 400, "ERR_UPLOAD_RULE_VIOLATED"),
    "allowed extensions": ({"rules": UploadRules(allowed_extensions=(".png",))}, 400, "ERR_UPLOAD_RULE_VIOLATED"),
    "required metadata": ({"rules": UploadRules(required_metadata=("owner",))}, 400, "ERR_UPLOAD_RULE_VIOLATED"),
    "rule max_size": ({"rules": UploadRules(max_size=4)}, 413, "ERR_MAX_SIZE_EXCEEDED"),
    "max_size": ({"max_size": 4}, 413, "ERR_MAX_SIZE_EXCEEDED"),
    "metadata size": ({"max_metadata_size": 12}, 431, "ERR_METADATA_TOO_LARGE"),
    "metadata pairs": ({"max_metadata_pairs": 1}, 431, "ERR_METADATA_TOO_LARGE"),
}


def open_for_setup(client: httpx.AsyncClient) -> None:
    """The partials ``tus_final`` makes are admitted without the rules under test; the final is not."""
    app = client.app
    app.admission_open = False
    app.setup_ids = set()
    policy = app.handlers.policy
    admit = policy.admit

    async def gated_admit(request, info):
        if app.admission_open:
            return info, None
        return await admit(request, info)

    policy.admit = gated_admit


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("creator", CREATORS, ids=lambda c: c.__name__)
async def test_every_creation_path_meets_every_admission_rule(client_factory, upload_dir, creator, rule):
    overrides, status, text = RULES[rule]
    client = client_factory(enable_experimental_protocol=True, **overrides)
    open_for_setup(client)
    app = client.app
    before = stored_uploads(upload_dir)
    r = await creator(client)
    assert r.status_code == status, (r.status_code, r.text)
    assert text in r.text
    assert "location" not in r.headers
    assert stored_uploads(upload_dir) == before | app.setup_ids, "a refused upload left something in the store"


@pytest.mark.parametrize("creator", CREATORS, ids=lambda c: c.__name__)
async def test_every_creation_path_is_admitted_when_the_rules_allow_it(client_factory, upload_dir, creator):
    """The same requests pass when nothing forbids them (so the test above fails for the right reason)."""
    seen = []

    async def hook(hook_type: str, request: dict) -> None:
        seen.append(request["Event"]["Upload"]["MetaData"].get("filetype"))

    client = client_factory(enable_experimental_protocol=True,
                            hooks=Hooks(PythonHookBackend(hook), ("pre-create",)),
                            rules=UploadRules(allowed_types=("text/*",), allowed_extensions=(".html",), max_size=5))
    open_for_setup(client)
    r = await creator(client)
    assert r.status_code == 201, r.text
    assert "text/html" in seen  # the pre-create hook saw the upload, whatever the protocol


@pytest.mark.parametrize("version", DRAFT_VERSIONS)
async def test_draft_creation_takes_the_pre_create_hooks_changes(client_factory, upload_dir, version):
    """ChangeFileInfo (ID, metadata) and the hook's HTTPResponse headers apply to draft creations as to tus POSTs."""

    async def hook(hook_type: str, request: dict) -> dict:
        return {"ChangeFileInfo": {"ID": f"chosen-{version}", "MetaData": {"owner": "alice"}},
                "HTTPResponse": {"Header": {"X-Chosen": "yes"}}}

    client = client_factory(enable_experimental_protocol=True, hooks=Hooks(PythonHookBackend(hook), ("pre-create",)))
    r = await draft_post(version)(client)
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/files/chosen-{version}")
    assert r.headers["x-chosen"] == "yes"
    assert (upload_dir / f"chosen-{version}").read_bytes() == b"<b>x<"
    assert '"owner":"alice"' in (upload_dir / f"chosen-{version}.info").read_text().replace(" ", "")


async def test_a_declared_length_meets_the_size_rules(client_factory):
    """creation-defer-length: the length given later (tus PATCH) passes the same size rule as one given at once."""
    client = client_factory(rules=UploadRules(max_size=10))
    r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    url = r.headers["location"]
    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0", "Upload-Length": "11"})
    assert r.status_code == 413 and "ERR_MAX_SIZE_EXCEEDED" in r.text
    r = await client.patch(url, headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0",
                                         "Upload-Length": str(2**63)})
    assert r.status_code == 400 and "ERR_INVALID_UPLOAD_LENGTH" in r.text


@pytest.mark.parametrize("version", (4, 8))
async def test_a_deferred_draft_upload_cannot_grow_past_the_limit(client_factory, version):
    """A draft upload without a length is held to the size limit while its body streams."""
    client = client_factory(enable_experimental_protocol=True, max_size=8)
    headers = {"Upload-Draft-Interop-Version": str(version), "Upload-Complete": "?0"}
    r = await client.post("/files/", headers=headers, content=b"x" * 9)
    assert r.status_code == 413 and "ERR_MAX_SIZE_EXCEEDED" in r.text


@pytest.mark.e2e
@pytest.mark.parametrize("version", DRAFT_VERSIONS)
def test_the_reviews_draft_attack_through_the_command(pytusd_factory, tmp_path, version):
    """As the review did it: the command with the experimental protocol, a pre-create hook script that rejects and
    --allowed-types image/png; a draft POST of text/html is refused like a tus POST, and nothing is stored."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    script = hooks / "pre-create"
    script.write_text('#!/bin/sh\ncat > /dev/null\necho \'{"RejectUpload": true}\'\n')
    script.chmod(0o755)
    server = pytusd_factory("--enable-experimental-protocol", "--hooks-dir", str(hooks))
    headers = {"Upload-Draft-Interop-Version": str(version), **draft_complete(version), "Content-Type": "text/html"}
    r = httpx.post(server.url, headers=headers, content=b"<script>")
    assert r.status_code == 400 and "ERR_UPLOAD_REJECTED" in r.text, r.text
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": "8"})
    assert r.status_code == 400 and "ERR_UPLOAD_REJECTED" in r.text
    script.unlink()
    ruled = pytusd_factory("--enable-experimental-protocol", "--allowed-types", "image/png",
                           upload_dir=tmp_path / "ruled")
    r = httpx.post(ruled.url, headers=headers, content=b"<script>")
    assert r.status_code == 400 and "ERR_UPLOAD_RULE_VIOLATED" in r.text, r.text
    png = {**headers, "Content-Type": "image/png"}
    assert httpx.post(ruled.url, headers=png, content=b"\x89PNG").status_code == 201
    assert stored_uploads(server.upload_dir) == set()
    assert len(stored_uploads(tmp_path / "ruled")) == 1


@pytest.mark.parametrize("creator", [tus_post, draft_post(8)], ids=lambda c: c.__name__)
async def test_the_size_rule_comes_before_the_metadata_rules_on_every_path(client_factory, creator):
    """The same order on every path (tusd's): an upload too large and with too much metadata is told it is too
    large, whichever protocol made it."""
    client = client_factory(enable_experimental_protocol=True, max_size=4, max_metadata_size=8)
    r = await creator(client)
    assert r.status_code == 413 and "ERR_MAX_SIZE_EXCEEDED" in r.text, r.text
    client = client_factory(enable_experimental_protocol=True, max_size=5, max_metadata_size=8)
    r = await creator(client)
    assert r.status_code == 431 and "ERR_METADATA_TOO_LARGE" in r.text, r.text


@pytest.mark.parametrize("chosen", ["report.concat", "report.lock", "a/b.INFO", "x.part", "y.pending", "z.tmp"])
async def test_no_upload_may_take_the_name_of_another_uploads_files(client_factory, upload_dir, chosen):
    """Found by review: a hook naming uploads from client input could make ``report.concat`` (overwritten when
    final ``report`` concatenates) or ``report.lock`` (the file locker's file of upload ``report``). IDs ending in a
    suffix that stores and lockers keep beside an upload are refused, also in URLs."""

    async def hook(hook_type: str, request: dict) -> dict:
        return {"ChangeFileInfo": {"ID": chosen}}

    client = client_factory(hooks=Hooks(PythonHookBackend(hook), ("pre-create",)))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status_code == 500 and "cannot name an upload" in r.text
    assert stored_uploads(upload_dir) == set()
    plain = client_factory()
    r = await plain.post("/files/", headers={**TUS, "Upload-Length": "3"})
    upload_id = r.headers["location"].rsplit("/", 1)[1]
    for suffix in (".info", ".lock", ".concat"):
        assert (await plain.head(f"/files/{upload_id}{suffix}", headers=TUS)).status_code == 404
