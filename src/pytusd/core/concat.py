"""Concatenation and concatenation-unfinished: final uploads made of partial ones.

Used by the tus flows (:attr:`pytusd.core.tus.TusFlows.concat`); the final upload does the byte work
(:meth:`pytusd.stores.Concatenatable.concat`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import errors
from ..info import UploadInfo
from ..stores import Upload, base
from . import grammar
from .http import Request, Response

if TYPE_CHECKING:
    from .uploads import Uploads

log = logging.getLogger("pytusd")


class Concatenation:
    def __init__(self, handlers: Uploads) -> None:
        self.handlers = handlers
        # Finals created here that wait for unfinished partials: partial ID -> final IDs. Completing the last
        # partial in this process concatenates at once; any other process (or a restart) does it when the final is
        # next loaded, so the index only saves time and is never needed for correctness.
        self._waiting: dict[str, set[str]] = {}

    async def partials(self, request: Request, urls: list[str]) -> tuple[list[str], int, bool]:
        """The IDs of the partial uploads a final one names, in order, their total size, and whether all are
        complete. Unfinished partials are fine (concatenation-unfinished) as long as their
        lengths are known, so that the final's length is.

        Creating the final reads each partial's bytes, so each passes the access rule (pre-access) with this
        request, as a ``GET`` of it would; their number is limited before any is looked up."""
        handlers = self.handlers
        policy = handlers.policy
        policy.check_concat(urls)
        uploads_path = handlers.uploads_path(request)
        ids: list[str] = []
        size = 0
        complete = True
        for url in urls:
            upload_id = grammar.upload_id_from_url(url, uploads_path)
            with handlers.store_operation("get", upload_id):
                info = await (await handlers.store.get(upload_id)).info()
            await policy.access(request, upload_id, info)
            if not info.is_partial:
                raise errors.ERR_INVALID_CONCAT(f"{url} is not a partial upload")
            if info.size_is_deferred:
                raise errors.ERR_UPLOAD_NOT_FINISHED("a partial upload's length is not known yet")
            if not info.is_complete and not handlers.can_concat_unfinished:
                raise errors.ERR_UPLOAD_NOT_FINISHED()
            complete = complete and info.is_complete
            ids.append(info.id)
            size += info.size
        return ids, size, complete

    def wait_for_partials(self, final: UploadInfo) -> None:
        for partial_id in final.partial_uploads:
            self._waiting.setdefault(partial_id, set()).add(final.id)

    async def complete_if_ready(
        self, request: Request, final: Upload, info: UploadInfo, response: Response | None = None
    ) -> UploadInfo:
        """Concatenate a final upload once all its partials are complete (the caller holds the final's lock).

        The lock and the ``is_complete`` check make this happen exactly once, in order, however many partials
        finish at the same moment.
        """
        store = self.handlers.store
        partials = []
        total = 0
        for partial_id in info.partial_uploads:
            try:
                partial = await store.get(partial_id)
            except errors.TusError as exc:
                if not exc.is_(errors.ERR_UPLOAD_NOT_FOUND, errors.ERR_UPLOAD_EXPIRED):
                    raise
                # A partial was terminated (or expired) first: this final can never be concatenated. It stays an
                # unfinished final (HEAD without an offset) that can be terminated; passing the partial's 404 on made
                # the final itself answer 404 to everything, DELETE included.
                log.warning("final upload %s names partial %s, which is gone", info.id, partial_id)
                return info
            partial_info = await partial.info()
            if not partial_info.is_complete:
                return info
            partials.append(partial)
            total += partial_info.size
        if total != info.size:
            # A partial was replaced behind our back (deleted, then made again under its ID with another length):
            # like a gone one, this final can never be concatenated; it stays unfinished and can be terminated.
            log.warning("final upload %s: its partials add up to %d bytes, not its %d", info.id, total, info.size)
            return info
        # The store's concat is all-or-nothing and may be repeated (a retry after a failure, or another process
        # after a crash): it never appends on top of what an earlier attempt wrote.
        try:
            with self.handlers.store_operation("concat", info.id):
                await base.concatenatable(final).concat(partials)  # a store that has finals concatenates
        except errors.TusError as exc:
            if not exc.is_(errors.ERR_UPLOAD_NOT_FOUND):
                raise
            log.warning("final upload %s: a partial went away while it was concatenated", info.id)
            return info
        info = await final.info()
        if not info.is_complete:
            raise errors.ERR_INTERNAL_SERVER_ERROR(
                f"concatenating final upload {info.id} stored {info.offset} of its {info.size} bytes"
            )
        log.info("final upload %s concatenated from %d partials", info.id, len(partials))
        for partial_id in info.partial_uploads:
            waiting = self._waiting.get(partial_id)
            if waiting is not None:
                waiting.discard(info.id)
                if not waiting:
                    del self._waiting[partial_id]
        return await self.handlers.finished(request, final, info, response)

    async def partial_completed(self, request: Request, partial_id: str) -> None:
        """A partial just completed: finish the finals of this process that waited for it."""
        handlers = self.handlers
        for final_id in list(self._waiting.get(partial_id, ())):
            try:
                async with handlers.locked(request, final_id):
                    await handlers.load(request, final_id)
            except errors.TusError as exc:
                log.warning("final upload %s could not be completed yet: %s", final_id, exc)
