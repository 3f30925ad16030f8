"""The upload page (pytusd.asgi.page) and Uppy in a real headless Chromium against a real pytusd process.

The browser is the Debian package (/usr/bin/chromium), driven by playwright-core from the Node scripts in
tests/e2e/browser (scripts/test installs both); nothing downloads a browser. Screenshots are kept in
tests/e2e/artifacts/. PYTUSD_DOCS_SCREENSHOT=1 also refreshes docs/upload-page.png (the README's picture).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess

import httpx
import pytest

from pytusd.asgi import page

from ..conftest import raw_request
from .conftest import REPO

BROWSER_DIR = REPO / "tests" / "e2e" / "browser"
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
CHROMIUM = os.environ.get("PYTUSD_CHROMIUM", "/usr/bin/chromium")
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def random_file(path, size: int):
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture(scope="session")
def node_browser() -> str:
    """node, with playwright-core and uppy in tests/e2e/browser/node_modules, and the Debian Chromium."""
    node = shutil.which("node")
    missing = [
        what
        for what, ok in [
            ("node", node is not None),
            ("playwright-core", (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()),
            ("uppy", (BROWSER_DIR / "node_modules" / "uppy" / "dist" / "uppy.min.js").is_file()),
            (CHROMIUM, os.access(CHROMIUM, os.X_OK)),
        ]
        if not ok
    ]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing for the browser tests in CI: {', '.join(missing)} (scripts/test installs them)")
        pytest.skip(f"missing {', '.join(missing)}: run scripts/test")
    ARTIFACTS.mkdir(exist_ok=True)
    assert node is not None
    return node


def run_script(node: str, script: str, *args: str, timeout: float = 60) -> dict:
    result = subprocess.run(
        [node, str(BROWSER_DIR / script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BROWSER_DIR,
        env={**os.environ, "PYTUSD_CHROMIUM": CHROMIUM},
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def requests_in_log(log: str, method: str, path_prefix: str) -> list[str]:
    return re.findall(rf'msg="({method} {re.escape(path_prefix)}\S* -> \d+)', log)


# -- the page over HTTP (in-process app, no browser) -------------------------------------------------------------------


async def test_page_and_its_files(client_factory):
    client = client_factory(upload_page=True)
    r = await client.get("/", headers=HTML)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == "default-src 'self'"
    assert r.headers["cache-control"] == "no-cache" and r.headers["etag"].startswith('"')
    assert 'data-endpoint="/files/"' in r.text and 'data-downloads="true"' in r.text
    assert 'src="/page/page.js"' in r.text and "http" not in re.sub(r'href="https://tus.io"', "", r.text)
    for name, content_type in [
        ("tus.js", "text/javascript; charset=utf-8"),
        ("page.js", "text/javascript; charset=utf-8"),
        ("page.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ]:
        r = await client.get(f"/page/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == content_type, name
        assert r.headers["content-security-policy"] == "default-src 'self'"
        again = await client.get(f"/page/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    head = await client.head("/page/tus.js")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 1000
    # Only the package's own assets: no other names, no traversal, no source files.
    for path in ["/page/", "/page/index.html", "/page/__init__.py", "/page/../app.py", "/page/%2e%2e/app.py",
                 "/page/../../pytusd/app.py", "/page//tus.js", "/page/tus.js/"]:
        status, _, _ = await raw_request(client.app, "GET", path)
        assert status == 404, path
    assert (await client.post("/page/tus.js")).status_code == 404
    # The upload endpoint itself is unchanged.
    assert (await client.get("/files/")).status_code == 405


async def test_page_greeting_and_options(client_factory):
    # Library default: no page, no greeting.
    assert (await client_factory().get("/", headers=HTML)).status_code == 404
    # Page and greeting (the command's defaults): browsers get the page, curl and scripts the greeting.
    both = client_factory(upload_page=True, show_greeting=True)
    assert (await both.get("/", headers=HTML)).headers["content-type"].startswith("text/html")
    r = await both.get("/", headers={"Accept": "*/*"})
    assert r.headers["content-type"].startswith("text/plain") and "Welcome to pytusd" in r.text
    # The page off: the greeting, as before, and no page files.
    greeting = client_factory(show_greeting=True)
    assert (await greeting.get("/", headers=HTML)).text.startswith("Welcome to pytusd")
    assert (await greeting.get("/page/tus.js")).status_code == 404
    # Downloads off, a size limit, and a base path that covers /page/: the files move to /_page/.
    other = client_factory(upload_page=True, disable_download=True, max_size=1000, base_path="/page/")
    r = await other.get("/", headers=HTML)
    assert 'data-downloads="false"' in r.text and 'data-max-size="1000"' in r.text
    assert 'src="/_page/page.js"' in r.text and 'data-endpoint="/page/"' in r.text
    assert (await other.get("/_page/page.js")).status_code == 200
    assert (await other.get("/page/page.js")).status_code == 405  # an upload URL now
    # Uploads on another origin: the policy allows exactly that one for XHR.
    cdn = client_factory(upload_page=True, base_path="https://cdn.example/files/")
    r = await cdn.get("/", headers=HTML)
    assert r.headers["content-security-policy"] == "default-src 'self'; connect-src 'self' https://cdn.example"
    assert 'data-endpoint="https://cdn.example/files/"' in r.text


def test_asset_prefix_never_inside_the_upload_routes():
    assert page.asset_prefix("/files/") == "/page/"
    assert page.asset_prefix("/page/") == "/_page/"
    assert page.asset_prefix("/page/tus.js/") == "/_page/"
    assert page.asset_prefix("/") is None


def test_package_ships_the_page_files():
    from importlib import resources

    files = resources.files("pytusd.asgi.page")
    for name in ("index.html", *page.ASSETS):
        assert files.joinpath(name).is_file(), name
    tus_js = files.joinpath("tus.js").read_text()
    assert 150 <= len(tus_js.splitlines()) <= 250 and "import " not in tus_js  # ours, readable, no dependencies


# -- the page in Chromium ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_upload_page_pause_reload_resume(pytusd_factory, node_browser, tmp_path):
    big = random_file(tmp_path / "big.bin", 20 * 1024 * 1024)
    small = random_file(tmp_path / "small.bin", 3 * 1024 * 1024)
    server = pytusd_factory()  # the command's defaults: --upload-page and --show-greeting on
    docs = []
    if os.environ.get("PYTUSD_DOCS_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        docs = ["--docs-screenshot", str(REPO / "docs" / "upload-page.png")]
    out = run_script(node_browser, "upload-page.mjs", server.url.removesuffix("files/"), str(big), str(small),
                     str(ARTIFACTS), *docs)

    # The page came from pytusd with its policy, and asked nothing of any other origin.
    assert out["headers"]["content-security-policy"] == "default-src 'self'"
    assert out["foreign"] == []
    assert [e for e in out["errors"] if "status of 503" not in e] == []  # Chromium logs the injected 503 below
    assert "left" in out["statusWhileUploading"] and "/s" in out["statusWhileUploading"]

    # Paused mid-way; after the reload the page listed it, and choosing the file again resumed it at the server's
    # offset: the same upload URL, no second POST for it.
    size = big.stat().st_size
    assert 0.3 <= out["pausedAtFraction"] < 1 and out["statusWhilePaused"].startswith("Paused at")
    assert 0 < out["offsetAtPause"] < size
    assert out["unfinished"].startswith("big.bin (20.0 MiB)")
    assert out["resumedFrom"] == out["offsetAtPause"]
    assert out["failedPatches"] == 1  # a 503 on the way, retried
    assert out["bigUrlAfter"] == out["urls"]["big.bin"]
    assert "resumed at" in out["statusDone"]
    assert out["unfinishedAfter"] is False and out["storage"] == []  # finished uploads are forgotten
    log = server.log()
    assert len(requests_in_log(log, "POST", "/files/")) == 2, log
    assert len(requests_in_log(log, "HEAD", "/files/")) >= 3, log  # ours at the pause, the resume, the retry

    # Both files arrived intact, and the download links serve them.
    for source in (big, small):
        url = out["urls"][source.name]
        assert out["downloads"][source.name] == url
        assert sha256(server.upload_dir / url.rsplit("/", 1)[1]) == sha256(source)
    download = httpx.get(out["downloads"]["small.bin"])
    assert hashlib.sha256(download.content).hexdigest() == sha256(small)
    assert (ARTIFACTS / "upload-page.png").stat().st_size > 1000


@pytest.mark.e2e
def test_uppy_pause_and_resume(pytusd_factory, node_browser, tmp_path):
    source = random_file(tmp_path / "uppy.bin", 20 * 1024 * 1024 + 4321)
    server = pytusd_factory()
    out = run_script(node_browser, "uppy.mjs", server.url, str(source), str(ARTIFACTS))

    assert out["complete"] == {"successful": 1, "failed": 0} and out["errors"] == []
    size = source.stat().st_size
    assert out["pausedNow"] is True and 0 < out["pausedAt"] < size
    assert out["progressAfterPause"] == out["pausedAt"]  # nothing moved while paused
    assert 0 < out["offsetAtPause"] < size
    assert out["url"] == out["uploadUrl"] and out["foreign"] == []
    log = server.log()
    assert len(requests_in_log(log, "POST", "/files/")) == 1, log  # resumed (HEAD + PATCH), not created again
    assert requests_in_log(log, "HEAD", "/files/"), log
    assert sha256(server.upload_dir / out["url"].rsplit("/", 1)[1]) == sha256(source)
