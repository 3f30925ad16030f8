"""The tus 1.0 request flows: one method per kind of request, each in the same order of steps.

lock -> load -> validate -> write -> finish -> respond. The steps are the shared operations (:mod:`.uploads`),
header rules come from :mod:`.grammar`, admission and access from :mod:`.policy`; routing, CORS and error
rendering are the app's.
"""

from __future__ import annotations

import logging

from .. import errors
from ..info import UploadInfo, download_headers
from ..observe import logs, tracing
from ..observe.metrics import Metrics
from ..stores import base
from . import digests, expiration, grammar
from .config import Config
from .events import Events
from .http import Request, Response
from .concat import Concatenation
from .uploads import Uploads, merge_hook_response

log = logging.getLogger("pytusd")


class TusFlows(Uploads):
    """tus 1.0's OPTIONS, POST, HEAD, PATCH, DELETE and GET, on the shared operations; with concatenation."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
        events: Events | None = None,
    ) -> None:
        super().__init__(config, metrics, tracer, events)
        self.concat = Concatenation(self)
        self.finals = self.concat

    # -- flows ----------------------------------------------------------------------------------------------------

    def options(self, request: Request) -> Response:
        headers = {"Tus-Version": grammar.TUS_VERSION, "Tus-Extension": self.extensions_for(request)}
        if self.can_checksum:
            headers["Tus-Checksum-Algorithm"] = ",".join(grammar.CHECKSUM_ALGORITHMS)
        if self.config.max_size:
            headers["Tus-Max-Size"] = str(self.config.max_size)
        # 200 rather than 204: some browsers treat a 204 preflight as a failure.
        return Response(200, headers)

    async def create(self, request: Request) -> Response:
        headers = request.headers
        with_data = headers.get("content-type") == grammar.OFFSET_CONTENT_TYPE
        concat_header = headers.get("upload-concat")
        if concat_header and not self.can_concat:
            raise errors.ERR_CONCATENATION_UNSUPPORTED()
        kind, partial_urls = grammar.parse_concat(concat_header)
        partial_ids: list[str] = []
        partials_complete = True
        if kind == "final":
            if with_data:
                raise errors.ERR_MODIFY_FINAL("a final upload is made of its partials and takes no data")
            partial_ids, size, partials_complete = await self.concat.partials(request, partial_urls)
            deferred = False
        else:
            size, deferred = grammar.parse_creation_length(
                headers.get("upload-length"), headers.get("upload-defer-length"), self.can_defer_length
            )
        if not deferred:
            self.policy.check_size(size)  # admission's first step (admit repeats it), before metadata is decoded
        # The header is bounded before it is decoded; admission then measures the metadata like any other path's.
        metadata = grammar.parse_metadata(
            headers.get("upload-metadata"),
            strict=True,
            max_size=self.config.max_metadata_size,
            max_pairs=self.config.max_metadata_pairs,
        )
        if with_data:
            self._checksum(request)
        info = UploadInfo(
            size=size,
            size_is_deferred=deferred,
            metadata=metadata,
            is_partial=kind == "partial",
            is_final=kind == "final",
            partial_uploads=tuple(partial_ids),
        )
        info, hook_answer = await self.policy.admit(request, info)
        upload, info = await self.create_upload(request, info)
        url = self.upload_url(request, info.id)
        response = Response(201, {"Location": url})
        if hook_answer is not None:
            merge_hook_response(response, hook_answer)
        await self.announce("created", info, request)
        if self.expiration and not info.is_complete and kind != "final":
            response.headers["Upload-Expires"] = expiration.expires_header(self.expiration)
        try:
            if kind == "final":
                if not partials_complete:
                    self.concat.wait_for_partials(info)
                async with self.locked(request, info.id):
                    # Partials may have completed since they were checked: this concatenates if they all are.
                    await self.concat.complete_if_ready(request, upload, info, response)
            elif with_data:
                async with self.locked(request, info.id):
                    await self.write_body(request, upload, info, response, 0)
            elif info.is_complete:  # an empty upload is finished the moment it exists
                await self.finished(request, upload, info, response)
        except errors.TusError as exc:
            # The upload exists: tell the client where, so it can resume what this request could not finish.
            raise exc(headers={"Location": url}) from None
        return response

    async def head(self, request: Request) -> Response:
        upload_id = self.upload_id_of(request)
        async with self.locked(request, upload_id):
            _, info = await self.load(request, upload_id)
        headers = {"Cache-Control": "no-store"}
        if not (info.is_final and not info.is_complete):  # a final has no offset until concatenated
            headers["Upload-Offset"] = str(info.offset)
        if info.is_partial:
            headers["Upload-Concat"] = "partial"
        elif info.is_final:
            urls = " ".join(self.upload_url(request, partial) for partial in info.partial_uploads)
            headers["Upload-Concat"] = f"final;{urls}"
        if info.metadata:
            headers["Upload-Metadata"] = grammar.serialize_metadata(info.metadata)
        if info.size_is_deferred:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(info.size)
            headers["Content-Length"] = str(info.size)
        if (digest := digests.header_value(info)) is not None:
            headers["Repr-Digest"] = digest
        return Response(200, headers)

    async def patch(self, request: Request) -> Response:
        headers = request.headers
        if headers.get("content-type") != grammar.OFFSET_CONTENT_TYPE:
            raise errors.ERR_INVALID_CONTENT_TYPE()
        offset = grammar.parse_offset(headers.get("upload-offset"))
        self._checksum(request)  # a malformed Upload-Checksum is refused before anything is locked or read
        upload_id = self.upload_id_of(request)
        async with self.locked(request, upload_id):
            upload, info = await self.load(request, upload_id)
            response = Response(204, {})
            await self.append(request, upload, info, response, offset, headers.get("upload-length"))
            return response

    async def delete(self, request: Request) -> Response:
        upload_id = self.upload_id_of(request)
        response = Response(204, {})
        async with self.locked(request, upload_id):
            upload, info = await self.load(request, upload_id, complete_finals=False)
            if self.hooks is not None and self.hooks.wants("pre-terminate"):
                answer = await self.hooks.call("pre-terminate", info, request.hook_http())
                if answer.reject_termination:
                    raise answer.error(errors.ERR_UPLOAD_TERMINATION_REJECTED)
                merge_hook_response(response, answer)
            with self.store_operation("terminate", upload_id):  # DELETE is routed here only when can_terminate
                await base.terminatable(upload).terminate()
        self.metrics.upload_terminated(upload_id)
        log.info("upload %s terminated", upload_id,
                 extra=logs.fields(event="UploadTerminated", upload_id=upload_id, offset=info.offset))
        await self.announce("terminated", info, request)
        return response

    async def get(self, request: Request) -> Response:
        """Download what is stored. The lock is held only to read the state (and to let a store prepare the read):
        bytes below the offset never change, so streaming them does not block the upload from going on."""
        upload_id = self.upload_id_of(request)
        async with self.locked(request, upload_id):
            upload, info = await self.load(request, upload_id)
            if not info.is_complete and not self.capabilities.readable_while_incomplete:
                raise errors.ERR_INCOMPLETE_UPLOAD()
            if self.capabilities.prepare_read:
                await base.read_preparing(upload).prepare_read()
            mtime = await base.timestamped(upload).modified_time() if self.capabilities.modified_time else None
        content_type, disposition = download_headers(info.metadata)
        size = info.offset
        headers = {"Content-Type": content_type, "Content-Disposition": disposition, "Accept-Ranges": "bytes"}
        if (digest := digests.header_value(info)) is not None:  # of the whole upload, also for a range of it
            headers["Repr-Digest"] = digest
        ranged = True
        if mtime is not None:
            etag = grammar.entity_tag(size, mtime)
            headers["ETag"] = etag
            headers["Last-Modified"] = grammar.http_date(mtime)
            status = grammar.check_preconditions(request.headers, etag, mtime)
            if status == 412:
                raise errors.ERR_PRECONDITION_FAILED()
            if status == 304:
                return Response(304, {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
            ranged = grammar.range_applies(request.headers, etag, mtime)
        byte_range = grammar.parse_range(request.headers.get("range"), size) if ranged and size else None
        if byte_range is None:
            headers["Content-Length"] = str(size)
            return Response(200, headers, stream=upload.reader(0, size) if size else None)
        first, last = byte_range
        headers["Content-Length"] = str(last - first + 1)
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return Response(206, headers, stream=upload.reader(first, last + 1))
