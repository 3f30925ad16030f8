"""Expiration: unfinished uploads are removed some time after their last change.

The flows call :func:`check` whenever they load an upload, so an expired one answers 410 at once; the
:class:`Cleaner` removes the rest in the background (and ``pytusd cleanup`` once, for cron), and what is left of
uploads whose data the storage removed by itself (a :class:`~pytusd.stores.base.Reclaiming` store). Neither touches
an upload that is finished or whose lock is held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .. import errors
from ..info import UploadInfo
from ..lockers import Locker
from ..stores import DataStore, Expiring, Upload, base
from . import grammar

log = logging.getLogger("pytusd")

# How long an expired upload is remembered (answers 410 rather than 404): at least a day.
REMEMBER_EXPIRED = 86400.0


def supported(store: DataStore, expiration: float) -> bool:
    return expiration > 0 and base.expiring(store) is not None


async def expires_at(store: DataStore, upload: Upload, info: UploadInfo, expiration: float) -> float | None:
    """When the upload expires, or None if it never does (finished, or its store cannot tell when it changed)."""
    if info.is_complete or not base.capabilities(store).modified_time:
        return None
    return await base.timestamped(upload).modified_time() + expiration


def expires_header(expiration: float) -> str:
    """``Upload-Expires`` for an upload that just changed (expiration extension)."""
    return grammar.http_date(time.time() + expiration)


async def check(store: DataStore, upload: Upload, info: UploadInfo, expiration: float) -> None:
    """Remove the upload and raise 410 if it has expired (the caller holds its lock; the store is expiring)."""
    deadline = await expires_at(store, upload, info, expiration)
    if deadline is not None and deadline <= time.time():
        await base.expirable(upload).expire()
        log.info("upload %s expired and was removed", info.id,
                 extra={"fields": {"event": "UploadExpired", "upload_id": info.id, "offset": info.offset}})
        raise errors.ERR_UPLOAD_EXPIRED()


class Cleaner:
    """Removes expired unfinished uploads every ``interval`` seconds."""

    def __init__(
        self, store: Expiring, locker: Locker, expiration: float, interval: float, *, metrics: Any = None
    ) -> None:
        self.store = store
        self.locker = locker
        self.expiration = expiration
        self.interval = interval
        self.metrics = metrics  # a pytusd.observe.metrics.Metrics: pytusd_expired_uploads_removed_total
        self.removed = 0  # expired uploads removed since start

    async def run_once(self) -> int:
        """One pass over the store; returns how many uploads it removed."""
        removed = 0
        now = time.time()
        reclaiming = base.reclaiming(self.store)
        async for upload_id in self.store.upload_ids():
            lock = await self.locker.try_acquire(upload_id)
            if lock is None:
                continue  # in use: not expired by any sensible measure
            try:
                try:
                    upload = await self.store.get(upload_id)
                except errors.TusError as exc:
                    # Listed but not found: gone meanwhile, or lost (the storage removed its data by itself).
                    if reclaiming is not None and exc.is_(errors.ERR_UPLOAD_NOT_FOUND):
                        if await reclaiming.reclaim(upload_id):
                            removed += 1
                            log.info("cleaner removed what was left of lost upload %s", upload_id,
                                     extra={"fields": {"event": "UploadReclaimed", "upload_id": upload_id}})
                    continue
                info = await upload.info()
                deadline = await expires_at(self.store, upload, info, self.expiration)
                if deadline is not None and deadline <= now:
                    await base.expirable(upload).expire()
                    removed += 1
                    log.info("cleaner removed expired upload %s (%d of %s bytes)", upload_id, info.offset,
                             "?" if info.size_is_deferred else info.size,
                             extra={"fields": {"event": "UploadExpired", "upload_id": upload_id, "offset": info.offset}})
            except errors.TusError:
                pass  # gone meanwhile, or unreadable: not ours to judge here
            finally:
                await lock.release()
        await self.store.forget_expired(now - max(REMEMBER_EXPIRED, self.expiration))
        self.removed += removed
        if self.metrics is not None:
            self.metrics.expired_removed(removed)
        return removed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except errors.TusError as exc:  # the storage or the locker cannot be reached: they logged it
                log.warning("expiration cleaner: %s; trying again in %.0f s", exc, self.interval)
            except Exception:
                log.exception("expiration cleaner failed; trying again in %.0f s", self.interval)
