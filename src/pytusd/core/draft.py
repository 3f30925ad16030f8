"""The IETF "Resumable Uploads for HTTP" draft (draft-ietf-httpbis-resumable-upload), interop versions 3 to 8.

A request takes this path when experimental support is on and it carries a known ``Upload-Draft-Interop-Version``;
anything else is tus 1.0. The flows reuse the tus machinery (stores, locks, body streaming, expiration): only the
headers, statuses and error documents differ.
"""

from __future__ import annotations

import json

from .. import errors
from ..info import UploadInfo
from ..stores import Upload
from . import digests, grammar
from .http import Request, Response
from .uploads import Uploads, merge_hook_response

VERSIONS = frozenset({3, 4, 5, 6, 7, 8})
PARTIAL_UPLOAD_TYPE = "application/partial-upload"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"


def parse_interop_version(value: str | None) -> int | None:
    """``Upload-Draft-Interop-Version`` -> a supported version, or None (the request is then tus 1.0).

    ASCII digits only: ``"²"`` (a Latin-1 byte) is a digit to :meth:`str.isdigit` but not to :func:`int`.
    """
    value = (value or "").strip()
    version = int(value) if len(value) < 3 and value.isascii() and value.isdigit() else None
    return version if version in VERSIONS else None


def interop_version(request: Request) -> int | None:
    return parse_interop_version(request.headers.get("upload-draft-interop-version"))


def _problem(error: errors.TusError, version: int, kind: str, title: str, **fields: int) -> errors.TusError:
    """From version 7, some errors are RFC 9457 problem documents of the draft's registered types."""
    if version < 7:
        return error
    document = {"type": PROBLEM_BASE + kind, "title": title, **fields}
    return error(body=json.dumps(document), headers={"Content-Type": "application/problem+json"})


class DraftFlows:
    def __init__(self, handlers: Uploads) -> None:
        self.handlers = handlers
        self.config = handlers.config

    # -- headers --------------------------------------------------------------------------------------------------

    def _complete_requested(self, request: Request, version: int) -> bool:
        """Whether the client says this request ends the upload (structured-field booleans)."""
        if version == 3:
            return request.headers.get("upload-incomplete", "").strip() == "?0"
        return request.headers.get("upload-complete", "").strip() == "?1"

    def _base_headers(self, version: int) -> dict[str, str]:
        return {"Upload-Draft-Interop-Version": str(version), "Upload-Limit": self.limits()}

    def _set_complete(self, headers: dict[str, str], version: int, complete: bool) -> None:
        if version == 3:
            headers["Upload-Incomplete"] = "?0" if complete else "?1"
        else:
            headers["Upload-Complete"] = "?1" if complete else "?0"

    def limits(self) -> str:
        limits = "min-size=0"
        if self.config.max_size:
            limits += f",max-size={self.config.max_size}"
        return limits

    # -- flows ----------------------------------------------------------------------------------------------------

    def options(self, request: Request, version: int) -> Response:
        return Response(200, self._base_headers(version))

    async def create(self, request: Request, version: int) -> Response:
        handlers = self.handlers
        complete = self._complete_requested(request, version)
        declared = request.headers.get("upload-length")
        length = grammar.parse_non_negative_int(declared) if declared is not None else None
        if declared is not None and length is None:
            raise errors.ERR_INVALID_UPLOAD_LENGTH()
        content_length = request.content_length
        if complete and content_length is not None:
            if length is not None and length != content_length:
                raise errors.ERR_INVALID_UPLOAD_LENGTH("Upload-Length and the complete request's length differ")
            length = content_length
        if length is None and not handlers.can_defer_length:
            raise errors.ERR_NOT_IMPLEMENTED("this server needs the upload's length")
        metadata = {}
        if content_type := request.headers.get("content-type"):
            metadata["filetype"] = content_type
        if (disposition := request.headers.get("content-disposition")) and (name := _filename(disposition)):
            metadata["filename"] = name
        info = UploadInfo(size=length or 0, size_is_deferred=length is None, metadata=metadata)
        # The same admission as a tus POST: size and metadata limits, upload rules, pre-create hook and callback.
        info, hook_answer = await handlers.policy.admit(request, info)
        upload, info = await handlers.create_upload(request, info)  # counted and logged
        url = handlers.upload_url(request, info.id)
        # 104 Upload Resumption Supported: the client learns where to resume before it sends the body (as tusd).
        await request.send_interim(104, {"Location": url, **self._base_headers(version)})
        response = Response(201, {"Location": url, **self._base_headers(version)})
        if hook_answer is not None:
            merge_hook_response(response, hook_answer)
        await handlers.announce("created", info, request)  # the post-create hook and the created event, as in tus 1.0
        try:
            async with handlers.locked(request, info.id):
                info = await handlers.write_body(request, upload, info, response, 0)
                info = await self._complete_if_asked(request, version, upload, info, complete)
        except errors.TusError as exc:
            raise exc(headers={"Location": url, **self._base_headers(version)}) from None
        self._set_complete(response.headers, version, info.is_complete)
        return response

    async def head(self, request: Request, version: int) -> Response:
        handlers = self.handlers
        upload_id = handlers.upload_id_of(request)
        async with handlers.locked(request, upload_id):
            _, info = await handlers.load(request, upload_id)
        headers = {"Cache-Control": "no-store", "Upload-Offset": str(info.offset), **self._base_headers(version)}
        if not info.size_is_deferred:
            headers["Upload-Length"] = str(info.size)
        if (digest := digests.header_value(info)) is not None:
            headers["Repr-Digest"] = digest
        self._set_complete(headers, version, info.is_complete)
        return Response(204, headers)

    async def append(self, request: Request, version: int) -> Response:
        handlers = self.handlers
        if version >= 6 and request.headers.get("content-type") != PARTIAL_UPLOAD_TYPE:
            raise errors.ERR_INVALID_CONTENT_TYPE(f"Content-Type must be {PARTIAL_UPLOAD_TYPE}")
        offset = grammar.parse_offset(request.headers.get("upload-offset"))
        complete = self._complete_requested(request, version)
        upload_id = handlers.upload_id_of(request)
        async with handlers.locked(request, upload_id):
            upload, info = await handlers.load(request, upload_id)
            response = Response(204, self._base_headers(version))
            try:
                # tus 1.0's append: no writes into a final, only at the offset; a complete upload is not touched.
                info = await handlers.append(request, upload, info, response, offset)
            except errors.TusError as exc:
                if exc.is_(errors.ERR_MISMATCHED_OFFSET):
                    raise _problem(
                        exc, version, "mismatching-upload-offset", "the upload offset does not match",
                        **{"expected-offset": info.offset, "provided-offset": offset},
                    ) from None
                if exc.is_(errors.ERR_UPLOAD_SIZE_EXCEEDED):
                    raise _problem(exc, version, "inconsistent-upload-length", "data past the upload's length") from None
                raise
            info = await self._complete_if_asked(request, version, upload, info, complete)
        self._set_complete(response.headers, version, info.is_complete)
        return response

    async def _complete_if_asked(
        self, request: Request, version: int, upload: Upload, info: UploadInfo, complete: bool
    ) -> UploadInfo:
        """A request marked complete ends the upload: a deferred length becomes the offset, a known one must match."""
        if not complete or info.is_complete:
            return info
        if not info.size_is_deferred:
            raise _problem(
                errors.ERR_INVALID_UPLOAD_LENGTH("the request completed the upload before its length was reached"),
                version,
                "inconsistent-upload-length",
                "the upload ended before its length",
            )
        info = await self.handlers.declare_length(upload, info, info.offset)
        return await self.handlers.finished(request, upload, info, None)


def _filename(disposition: str) -> str | None:
    for part in disposition.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "filename" and value:
            return value.strip().strip('"')
    return None
