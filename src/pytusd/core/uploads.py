"""The operations every request flow shares: lock, load, write, finish, create, announce.

lock -> load -> validate -> write -> finish -> respond. Header rules come from :mod:`.grammar`, bytes and info
from the store, locks from the locker; routing, CORS and error rendering are the app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol, cast

from .. import errors
from ..hooks import HookResponse, Hooks
from ..info import UploadInfo, is_valid_upload_id
from ..lockers.base import Lock
from ..observe import logs, tracing
from ..observe.metrics import Metrics
from ..stores import Upload, base
from . import checksums, digests, expiration, grammar
from .body import RequestBody
from .config import Config
from .events import HOOK_OF_EVENT, EventKind, Events, HTTPRequestInfo, UploadEvent, rejection, run_callback
from .http import Request, Response
from .policy import Policy, event_request

log = logging.getLogger("pytusd")


def merge_hook_response(response: Response, answer: HookResponse) -> None:
    """A hook's HTTPResponse changes the response: its status and body replace, its headers are added."""
    if answer.status_code:
        response.status = answer.status_code
    if answer.body is not None:
        response.body = answer.body.encode("utf-8")
    response.headers.update(answer.headers)


class Finals(Protocol):
    """What the shared operations ask of concatenation (:class:`pytusd.core.concat.Concatenation` is the one):
    loading an unfinished final tries to complete it, and a completed partial may complete the finals waiting
    for it. Concatenation uses these operations in turn, so they meet through this interface, set by the flows."""

    async def complete_if_ready(
        self, request: Request, final: Upload, info: UploadInfo, response: Response | None = None
    ) -> UploadInfo: ...

    async def partial_completed(self, request: Request, partial_id: str) -> None: ...


class Locked:
    """``async with uploads.locked(request, upload_id)``: the upload's lock, held for the block (a class rather
    than a generator's manager: every request for an upload goes through it)."""

    __slots__ = ("_uploads", "_request", "_upload_id", "_lock")

    def __init__(self, uploads: Uploads, request: Request, upload_id: str) -> None:
        self._uploads = uploads
        self._request = request
        self._upload_id = upload_id
        self._lock: Lock | None = None

    async def __aenter__(self) -> None:
        uploads, request = self._uploads, self._request
        with uploads.metrics.lock_wait(), uploads.tracing.span("lock.acquire", {"tus.upload_id": self._upload_id}):
            self._lock = await uploads.locker.acquire(
                self._upload_id,
                lambda: request.interrupt(errors.ERR_UPLOAD_INTERRUPTED()),
                uploads.config.acquire_lock_timeout,
            )

    async def __aexit__(self, *exc: object) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            await lock.release()


class Uploads:
    """The operations every flow shares (tus 1.0, the IETF draft, concatenation): lock, load, write, finish,
    create, announce; and what the store can do, found once (``can_*``, ``extensions``)."""


    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.hooks = cast("Hooks | None", config.hooks)  # Config.__post_init__ wraps a plain callable in Hooks
        # app.events: the event streams (created, progress, completed, terminated) published next to the hooks.
        self.events = events if events is not None else Events()
        self.metrics = metrics if metrics is not None else Metrics()
        self.tracing = tracer if tracer is not None else tracing.Tracing(config.tracer_provider)
        self.store = config.store
        # Admission, append and access rules, the same for every path (pytusd.core.policy).
        self.policy = Policy(config, self.store_operation)
        self.locker = config.locker
        # What the store's uploads can do, as the store declares it (stores.base.capabilities).
        self.capabilities = base.capabilities(self.store)
        self.can_terminate = self.capabilities.terminate and not config.disable_termination
        self.can_defer_length = self.capabilities.declare_length
        self.can_concat = self.capabilities.concat and not config.disable_concatenation
        extensions = ["creation", "creation-with-upload"]
        if self.can_terminate:
            extensions.append("termination")
        self.can_concat_unfinished = self.can_concat and not config.disable_concatenation_unfinished
        if self.can_concat:
            extensions.append("concatenation")
        if self.can_concat_unfinished:
            extensions.append("concatenation-unfinished")
        # Set by the flows that have concatenation (TusFlows): None means no final is ever completed here.
        self.finals: Finals | None = None
        if self.can_defer_length:
            extensions.append("creation-defer-length")
        self.can_checksum = self.capabilities.write_verified
        if self.can_checksum:
            extensions.append("checksum")
        # --digest: each upload's whole-content digest, computed as its bytes arrive (pytusd.core.digests).
        self.digests = (
            digests.Digests(digests.parse_algorithms(config.digest), self.capabilities.readable_while_incomplete)
            if config.digest
            else None
        )
        self.expiration = config.expiration if expiration.supported(self.store, config.expiration) else 0.0
        if self.expiration:
            extensions.append("expiration")
        # Tus-Extension: without checksum-trailer, which needs a server that passes request trailers on, a fact of
        # the request's server (see extensions_for).
        self.extensions = ",".join(extensions)
        if self.can_checksum:
            extensions.insert(extensions.index("checksum") + 1, "checksum-trailer")
        self._extensions_with_trailer = ",".join(extensions)

    # -- helpers --------------------------------------------------------------------------------------------------

    def checksum_trailer(self, request: Request) -> bool:
        """Whether checksum-trailer is served for this request: the store verifies writes and the server that carried
        the request passes trailers on (``config.request_trailers`` still forces it, for older embeddings)."""
        return self.can_checksum and (request.trailers_passed or self.config.request_trailers)

    def extensions_for(self, request: Request) -> str:
        """Tus-Extension, as the server that carried this request can serve it."""
        return self._extensions_with_trailer if self.checksum_trailer(request) else self.extensions

    def upload_url(self, request: Request, upload_id: str) -> str:
        base = self.config.base_path
        if "://" in base:
            return base + upload_id
        proto, host = request.origin(self.config.behind_proxy)
        return grammar.upload_url(proto, host, self.uploads_path(request), upload_id)

    def uploads_path(self, request: Request) -> str:
        """The URL path under which this app's uploads are reached, mount point included."""
        if "://" in self.config.base_path:
            return self.config.route_prefix
        return request.mount_prefix + self.config.base_path

    def event_request(self, request: Request, http: dict[str, object] | None = None) -> HTTPRequestInfo:
        """The request as events and callbacks see it (what hooks get as ``HTTPRequest``)."""
        return event_request(request, http)

    async def announce(self, kind: EventKind, info: UploadInfo, request: Request) -> None:
        """A notification: the matching post-* hook fires in the background (with ``--hooks-durable`` it is first
        recorded in the outbox, which this waits for) and the event goes to the subscribers of ``app.events``;
        neither ever fails the request."""
        hook_type = HOOK_OF_EVENT[kind]
        http = None
        if self.hooks is not None and self.hooks.wants(hook_type):
            http = request.hook_http()
            await self.hooks.notify(hook_type, info, http)
        if self.events.wants(kind):
            self.events.publish(UploadEvent(kind, info, self.event_request(request, http)))

    async def pre_finish(self, request: Request, info: UploadInfo, response: Response | None) -> None:
        """The pre-finish hook, then ``config.pre_finish``: their answers shape the response (when there is one).
        A callback raising TusError answers with that error's status, body and headers."""
        if self.hooks is not None and self.hooks.wants("pre-finish"):
            answer = await self.hooks.call("pre-finish", info, request.hook_http())
            if response is not None:
                merge_hook_response(response, answer)
        if self.config.pre_finish is not None:
            try:
                answer = await run_callback(self.config.pre_finish, "pre-finish", info, self.event_request(request))
            except errors.TusError as exc:
                answer = rejection(exc)
            if response is not None:
                merge_hook_response(response, answer)

    def store_operation(
        self, operation: str, upload_id: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Time a store operation (``pytusd_store_operation_seconds``) and trace it as a child span."""
        timed = self.metrics.store_operation(operation)
        if not self.tracing.active:
            return timed
        return self._traced_store_operation(timed, operation, upload_id)

    @contextlib.contextmanager
    def _traced_store_operation(
        self, timed: contextlib.AbstractContextManager[None], operation: str, upload_id: str | None
    ) -> Iterator[None]:
        attributes = {"tus.store.operation": operation}
        if upload_id:
            attributes["tus.upload_id"] = upload_id
        with timed, self.tracing.span(f"store.{operation}", attributes):
            yield

    def locked(self, request: Request, upload_id: str) -> Locked:
        """Hold the upload's lock (``async with``); a newer request for the same upload interrupts this one."""
        return Locked(self, request, upload_id)

    async def write_body(
        self, request: Request, upload: Upload, info: UploadInfo, response: Response, offset: int
    ) -> UploadInfo:
        """Stream the request body into the upload at ``offset``, finish it when complete, set Upload-Offset.

        The one way a request's bytes reach a store, so the append rule (:meth:`Policy.check_append`) is applied
        here for every flow: nothing is written into a final upload or at any offset but the stored one.

        Raises the reason the body ended early (if any) after every received byte is stored and the upload is
        finished if those bytes completed it. Once the request has ended early (the client went away, the server
        shuts down, another request wants the lock, a hook stopped the upload), that storing may take
        ``config.request_completion_timeout`` seconds at most (tusd's GracefulRequestCompletionTimeout): then it
        is cancelled and the reason is raised without an offset (what was stored is what a HEAD says).
        """
        try:
            return await self._write_body(request, upload, info, response, offset)
        except asyncio.CancelledError:
            body = request.body
            if body is None or not body.overdue():
                raise
            reason = body.error or errors.ERR_SERVER_SHUTDOWN()
            timeout = self.config.request_completion_timeout
            log.warning(
                "upload %s: the storage did not finish within %g s after the request ended (%s); stopped it",
                info.id, timeout, reason.code,
                extra=logs.fields(event="RequestCompletionTimeout", upload_id=info.id, reason=reason.code,
                                  timeout=timeout),
            )
            raise reason(f"the request ended and the storage did not finish within {timeout:g} s, so the data "
                         "received last may not be stored") from None
        finally:
            if request.body is not None:
                request.body.end_completion()

    async def _write_body(
        self, request: Request, upload: Upload, info: UploadInfo, response: Response, offset: int
    ) -> UploadInfo:
        self.policy.check_append(info, offset)
        length = request.content_length
        if info.size_is_deferred:
            limit = self.policy.size_limit - offset
            if length is not None and length > limit:
                raise errors.ERR_MAX_SIZE_EXCEEDED()
        else:
            limit = info.size - offset
            if length is not None and length > limit:
                raise errors.ERR_UPLOAD_SIZE_EXCEEDED()
        if length is not None:
            limit = min(limit, length)
        body = request.open_body(limit)
        body.bound_completion(self.config.request_completion_timeout)
        running = await self.digests.before_write(upload, info) if self.digests is not None else None
        hook_progress = self.hooks is not None and self.hooks.wants("post-receive")
        reports_progress = hook_progress or self.events.wants("progress")
        progress = self._report_progress(request, info, body, hook_progress) if reports_progress else None
        try:
            with self.metrics.active_upload(), self.store_operation("write", info.id):
                written = await self._write_chunks(request, upload, offset, body, running)
        except errors.TusError as exc:
            if not exc.is_(errors.ERR_STORAGE_FULL, errors.ERR_STORAGE_READ_ONLY):
                raise
            # The bytes stored before the storage failed are kept: tell the client where to resume from.
            stored = (await upload.info()).offset
            log.warning(
                "upload %s: %s at offset %d", info.id, exc.code, stored,
                extra=logs.fields(event="StorageFailed", upload_id=info.id, offset=stored, reason=exc.code),
            )
            raise exc(headers={"Upload-Offset": str(stored)}) from exc
        finally:
            if progress is not None:
                progress.cancel()
        self.metrics.bytes_received(written)
        info = info.replace(offset=offset + written)
        # How the body ended decides the answer. A request that got all of it may still be asked to let go while it
        # finishes (another request wants the lock of the final it is completing, or this upload's): too late then.
        error = body.error
        if body.error is not None and body.error.is_(errors.ERR_UPLOAD_STOPPED):
            if self.can_terminate:
                with self.store_operation("terminate", info.id):
                    await base.terminatable(upload).terminate()
                self.metrics.upload_terminated(info.id)
                log.info(
                    "upload %s stopped by a post-receive hook and terminated", info.id,
                    extra=logs.fields(event="UploadTerminated", upload_id=info.id, offset=info.offset,
                                      reason="stopped"),
                )
                await self.announce("terminated", info, request)  # as tusd: a stopped upload is a terminated one
            raise body.error
        if self.digests is not None:
            info = await self.digests.after_write(upload, info, running, written)
        if body.error is not None:
            log.info(
                "upload %s interrupted at offset %d: %s", info.id, info.offset, body.error.code,
                extra=logs.fields(event="UploadInterrupted", upload_id=info.id, offset=info.offset,
                                  received=written, reason=body.error.code),
            )
        if written:
            await self.announce("progress", info, request)
        response.headers["Upload-Offset"] = str(info.offset)
        if self.expiration and not info.is_complete:
            response.headers["Upload-Expires"] = expiration.expires_header(self.expiration)
        if info.is_complete:
            info = await self.finished(request, upload, info, response)
            if info.is_partial and self.finals is not None:
                await self.finals.partial_completed(request, info.id)
        if error is not None:
            raise error(headers={"Upload-Offset": str(info.offset)})
        return info

    def _report_progress(
        self, request: Request, info: UploadInfo, body: RequestBody, hook_progress: bool
    ) -> asyncio.Task[None]:
        """post-receive and ``progress`` events while a body streams: every progress interval in which bytes
        arrived (the hooks' interval when a post-receive hook is bound, else the events'). A hook answering
        StopUpload ends the request (400 ERR_UPLOAD_STOPPED, or its own response) and the upload is terminated."""
        hooks = self.hooks
        events = self.events
        interval = hooks.progress_interval if hook_progress and hooks is not None else events.progress_interval

        async def report() -> None:
            reported = 0
            while True:
                await asyncio.sleep(interval)
                if body.received == reported:
                    continue
                reported = body.received
                current = info.replace(offset=info.offset + reported)
                if events.wants("progress"):
                    events.publish(UploadEvent("progress", current, self.event_request(request)))
                if not hook_progress or hooks is None:
                    continue
                answer = await hooks.observe("post-receive", current, request.hook_http())
                if answer is not None and answer.stop_upload:
                    request.interrupt(answer.error(errors.ERR_UPLOAD_STOPPED))
                    return

        return asyncio.get_running_loop().create_task(report())

    async def _write_chunks(
        self, request: Request, upload: Upload, offset: int, body: RequestBody, running: digests.Running | None
    ) -> int:
        # With --digest the chunks are hashed on their way (and so not spliced: the bytes must pass through here).
        chunks = body.chunks() if running is None else running.feed(body.chunks())
        checksum = self._checksum(request)
        if checksum is not None:  # only when can_checksum (see _checksum)
            written = await checksums.write_checked(base.verifiable(upload), offset, body, chunks, checksum)
        elif self.checksum_trailer(request) and checksums.trailer_announced(request):
            written = await checksums.write_trailer_checked(base.verifiable(upload), request, offset, body, chunks)
        else:
            written = await upload.write(offset, chunks)
        return written

    def _checksum(self, request: Request) -> tuple[str, bytes] | None:
        header = request.headers.get("upload-checksum")
        if header is None or not self.can_checksum:
            return None
        return grammar.parse_checksum(header)

    async def load(self, request: Request, upload_id: str, complete_finals: bool = True) -> tuple[Upload, UploadInfo]:
        """The upload and its state, for a request holding its lock; an expired upload is removed here (410). A
        final whose partials are all complete is concatenated now (unless ``complete_finals`` is False: a DELETE
        does not need its bytes)."""
        with self.store_operation("get", upload_id):
            upload = await self.store.get(upload_id)
            info = await upload.info()
        if complete_finals and info.is_final and not info.is_complete and self.finals is not None:
            info = await self.finals.complete_if_ready(request, upload, info)
        if complete_finals and self.digests is not None and self.digests.wants_repair(info):
            info = await self.digests.finish(upload, info)  # its process died before the digest was stored
        if self.expiration:  # only when the store's uploads expire (expiration.supported)
            try:
                await expiration.check(self.store, upload, info, self.expiration)
            except errors.TusError as exc:
                if exc.is_(errors.ERR_UPLOAD_EXPIRED):
                    self.metrics.expired_removed(1)
                raise
        return upload, info

    async def finished(
        self, request: Request, upload: Upload, info: UploadInfo, response: Response | None
    ) -> UploadInfo:
        """The last byte is stored: let the store finish, store the digest (``--digest``), run pre-finish (its
        answer shapes the response), and announce post-finish. Returns the info as the hooks saw it."""
        with self.store_operation("finish", info.id):
            await upload.finish()
            if self.digests is not None:
                info = await self.digests.finish(upload, info)
        self.metrics.upload_finished(info.id, info.size)
        log.info("upload %s finished (%d bytes)", info.id, info.size,
                 extra=logs.fields(event="UploadFinished", upload_id=info.id, size=info.size))
        await self.pre_finish(request, info, response)
        await self.announce("completed", info, request)
        return info

    async def create_upload(self, request: Request, info: UploadInfo) -> tuple[Upload, UploadInfo]:
        """Create the upload in the store; count and log it."""
        info = digests.without_reserved(info)
        with self.store_operation("create", info.id or None):
            upload = await self.store.create(info)
            info = await upload.info()
        self.metrics.upload_created(info.id)
        tracing.annotate(tus__upload_id=info.id)
        size = "deferred" if info.size_is_deferred else info.size
        log.info("upload %s created (size %s)", info.id, size,
                 extra=logs.fields(event="UploadCreated", upload_id=info.id, size=size))
        return upload, info

    def upload_id_of(self, request: Request) -> str:
        if not is_valid_upload_id(request.upload_id):
            raise errors.ERR_UPLOAD_NOT_FOUND()
        return request.upload_id

    async def append(
        self, request: Request, upload: Upload, info: UploadInfo, response: Response, offset: int,
        declared_length: str | None = None,
    ) -> UploadInfo:
        """A ``PATCH`` of either protocol, on an upload the request holds the lock of: the append rule, then an
        upload that is complete already is answered with its offset, its body unread and nothing finished again
        (tusd); else a length declared with the request (creation-defer-length), then the body."""
        self.policy.check_append(info, offset)
        if info.is_complete:
            response.headers["Upload-Offset"] = str(info.offset)
            return info
        if declared_length is not None:
            length = grammar.parse_non_negative_int(declared_length)
            if length is None:
                raise errors.ERR_INVALID_UPLOAD_LENGTH()
            info = await self.declare_length(upload, info, length)
        return await self.write_body(request, upload, info, response, offset)

    async def declare_length(self, upload: Upload, info: UploadInfo, length: int) -> UploadInfo:
        """creation-defer-length: the length arrives later (a tus PATCH, or a draft request completing the upload),
        once, and passes the same size rule as a length given at creation."""
        if not self.can_defer_length:
            raise errors.ERR_NOT_IMPLEMENTED("this server cannot defer the upload length")
        if not info.size_is_deferred:
            raise errors.ERR_INVALID_UPLOAD_LENGTH("the upload's length is already known")
        if length < info.offset:
            raise errors.ERR_INVALID_UPLOAD_LENGTH("the declared length is below the upload's offset")
        self.policy.check_size(length, info)
        await base.length_deferrable(upload).declare_length(length)
        return info.replace(size=length, size_is_deferred=False)

