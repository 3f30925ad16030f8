"""pytusd in Starlette, post-processing finished uploads from the completed-uploads stream.

Run it::

    pip install pytusd starlette
    python examples/starlette_postprocess.py     # http://127.0.0.1:8000/uploads/files/, data in ./uploads/
    # or: uvicorn --app-dir examples starlette_postprocess:app

Every finished upload gets a sidecar file ``<upload>.sha256`` next to its data, holding the SHA-256 of its bytes
(``sha256sum`` format), and ``GET /checksums/<upload ID>`` answers it as JSON once it is computed. Terminating an
upload (``DELETE``) removes its sidecar.

How it fits together: the TusApp is mounted at ``/uploads``; the application's lifespan starts a task that
iterates ``tus.events.subscribe("completed", "terminated")``. Publishing never waits for this consumer: its
queue holds up to 1000 events and, should it fall that far behind, the oldest are dropped and counted
(``subscription.dropped``) -- a real application would then rescan the store for uploads without a sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from pytusd import Config, FileStore, Subscription, TusApp, UploadEvent

log = logging.getLogger("postprocess")


async def sha256_sidecar(tus: TusApp, event: UploadEvent) -> Path:
    """Hash the upload's bytes (read through the store, so any store works) and write ``<data file>.sha256``."""
    info = event.upload
    upload = await tus.config.store.get(info.id)
    digest = hashlib.sha256()
    async for block in upload.reader():
        digest.update(block)
    sidecar = Path(info.storage["Path"] + ".sha256")
    name = info.metadata.get("filename", info.id)
    sidecar.write_text(f"{digest.hexdigest()}  {name}\n")
    log.info("upload %s: sha256 %s (from %s)", info.id, digest.hexdigest(), event.request.remote_addr)
    return sidecar


async def post_process(tus: TusApp, events: Subscription) -> None:
    async for event in events:
        if event.upload.is_partial:
            continue  # parts of a concatenated upload: the final one gets its own event
        try:
            if event.kind == "completed":
                await sha256_sidecar(tus, event)
            elif event.kind == "terminated" and "Path" in event.upload.storage:
                Path(event.upload.storage["Path"] + ".sha256").unlink(missing_ok=True)
        except Exception:
            log.exception("post-processing upload %s failed", event.upload.id)
        if events.dropped:
            log.warning("%d upload events were dropped: this consumer is too slow", events.dropped)


def create_app(upload_dir: str | os.PathLike[str] = "uploads") -> Starlette:
    tus = TusApp(Config(store=FileStore(upload_dir), base_path="/files/"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Subscribe before serving, so that no upload finishes unseen.
        async with tus.events.subscribe("completed", "terminated", maxsize=1000) as events:
            worker = asyncio.create_task(post_process(tus, events))
            try:
                yield
            finally:
                tus.shutdown()  # open uploads store what they have and answer 503
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    async def checksum(request: Request) -> JSONResponse:
        upload_id = request.path_params["upload_id"]
        try:
            upload = await tus.config.store.get(upload_id)
        except Exception:
            return JSONResponse({"error": "no such upload"}, status_code=404)
        sidecar = Path((await upload.info()).storage["Path"] + ".sha256")
        if not sidecar.exists():
            return JSONResponse({"id": upload_id, "sha256": None}, status_code=202)  # not finished or not yet hashed
        return JSONResponse({"id": upload_id, "sha256": sidecar.read_text().split()[0]})

    app = Starlette(
        routes=[Route("/checksums/{upload_id:path}", checksum), Mount("/uploads", tus)],
        lifespan=lifespan,
    )
    app.state.tus = tus
    return app


app = create_app(os.environ.get("UPLOAD_DIR", "uploads"))

if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
