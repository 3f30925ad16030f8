"""The upload page: ``GET /`` shows a small page that uploads files with its own tus client (``tus.js``).

Served when ``Config.upload_page`` is set (the ``pytusd`` command's ``--upload-page``, on by default). The files
are part of this package, read once and kept in memory; only the names in :data:`ASSETS` are served, so no request
path reaches anything else. Every response carries ``Content-Security-Policy: default-src 'self'``: the page makes
no request to another origin (no CDN, no web fonts), only to the upload endpoint.

The assets live under the first of :data:`ASSET_PREFIXES` that the upload base path does not cover, so they can
never hide (or be hidden by) uploads. All paths are relative to where the app is mounted.
"""

from __future__ import annotations

import functools
import hashlib
import html
from importlib import resources
from typing import TYPE_CHECKING

from ...core.http import Request, Response

if TYPE_CHECKING:
    from ...core.config import Config

ASSET_PREFIXES = ("/page/", "/_page/", "/_pytusd/page/")
ASSETS = ("tus.js", "page.js", "page.css", "icon.svg")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
CSP = "default-src 'self'"


@functools.cache
def _file(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


@functools.cache
def _asset(name: str) -> tuple[bytes, str, str]:
    body = _file(name)
    return body, CONTENT_TYPES[name.rsplit(".", 1)[1]], _etag(body)


def asset_prefix(route_prefix: str) -> str | None:
    """Where the page's files are served: the first prefix outside the upload routes (None if all are inside)."""
    bare = route_prefix.rstrip("/")
    for prefix in ASSET_PREFIXES:
        probe = prefix + "tus.js"
        if not probe.startswith(route_prefix) and probe != bare:
            return prefix
    return None


def _csp(base_path: str) -> str:
    if "://" not in base_path:
        return CSP
    # Uploads go to another origin (an absolute base path): allow exactly that one for XHR.
    scheme, rest = base_path.split("://", 1)
    return f"{CSP}; connect-src 'self' {scheme}://{rest.split('/', 1)[0]}"


def respond(request: Request, config: Config) -> Response | None:
    """The page's answer to a GET or HEAD outside the upload routes, or None when the path is not one of its own.

    With ``config.show_greeting`` also set, ``/`` is left to the plain-text greeting for clients that do not ask
    for HTML (curl, scripts); browsers get the page.
    """
    path, base_path = request.path, config.base_path
    prefix = asset_prefix(config.route_prefix)
    if path == "/":
        if config.show_greeting and "text/html" not in request.headers.get("accept", ""):
            return None
        endpoint = base_path if "://" in base_path else request.mount_prefix + base_path
        values = {
            "assets": request.mount_prefix + (prefix or "/page/"),
            "endpoint": endpoint,
            "downloads": "false" if config.disable_download else "true",
            "max_size": str(config.max_size),
        }
        text = _file("index.html").decode()
        for name, value in values.items():
            text = text.replace("{{" + name + "}}", html.escape(value))
        body = text.encode()
        return _response(request, body, CONTENT_TYPES["html"], _etag(body), _csp(base_path))
    if prefix is None or not path.startswith(prefix):
        return None
    name = path[len(prefix) :]
    if name not in ASSETS:
        return None
    body, content_type, etag = _asset(name)
    return _response(request, body, content_type, etag, _csp(base_path))


def _response(request: Request, body: bytes, content_type: str, etag: str, csp: str) -> Response:
    # no-cache: the browser keeps the files but asks (If-None-Match) each time, so an upgrade shows at once.
    headers = {
        "Content-Type": content_type,
        "ETag": etag,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
    }
    wanted = request.headers.get("if-none-match")
    if wanted and (wanted.strip() == "*" or etag in (tag.strip().removeprefix("W/") for tag in wanted.split(","))):
        return Response(304, headers)
    return Response(200, headers, body)
