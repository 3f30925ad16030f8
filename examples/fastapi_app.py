"""pytusd in FastAPI: the tus endpoints as path operations behind an authentication dependency, one upload folder
per user.

Run it::

    pip install pytusd fastapi
    python examples/fastapi_app.py            # http://127.0.0.1:8000, uploads in ./uploads/<user>/
    # or: uvicorn --app-dir examples fastapi_app:app

and upload as alice (any tus client; the token is sent as ``Authorization: Bearer <token>``)::

    curl -i -X POST http://127.0.0.1:8000/files/ -H 'Tus-Resumable: 1.0.0' -H 'Upload-Length: 5' \\
         -H 'Authorization: Bearer alice-token'

How it fits together:

* ``current_user`` is an ordinary FastAPI dependency. It checks the bearer token and stores the user in
  ``request.state``, where pytusd's callbacks and events find it (``event.request.state``).
* ``pre_create`` (a :class:`pytusd.Config` callback) names every new upload ``<user>/<random>``: FileStore keeps it
  in ``uploads/<user>/``, and its URL is ``/files/<user>/<random>``.
* The upload routes are path operations with the dependency; each checks that the upload is the user's and hands
  the request to pytusd with ``tus.endpoints.<operation>.response()``.
* ``OPTIONS`` goes to ``tus.endpoints.options`` without authentication (browsers send CORS preflights without
  credentials), and :class:`pytusd.MethodOverrideMiddleware` lets clients that cannot send PATCH or DELETE use
  ``POST`` with ``X-HTTP-Method-Override``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response

from pytusd import Config, FileStore, HookResponse, MethodOverrideMiddleware, TusApp, UploadEvent

DEMO_TOKENS = {"alice-token": "alice", "bob-token": "bob"}


def create_app(upload_dir: str | os.PathLike[str] = "uploads", tokens: Mapping[str, str] = DEMO_TOKENS) -> FastAPI:
    """The FastAPI application, uploads stored under ``upload_dir/<user>/``; ``tokens`` maps bearer tokens to
    users (use your real authentication instead)."""

    async def current_user(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        user = tokens.get(token) if scheme.lower() == "bearer" else None
        if user is None:
            raise HTTPException(401, "a valid bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
        request.state.user = user  # for pytusd's callbacks and events: event.request.state["user"]
        return user

    async def pre_create(event: UploadEvent) -> HookResponse:
        user = event.request.state["user"]
        if event.upload.size > 100 * 1024 * 1024:
            return HookResponse(reject_upload=True, status_code=413, body="at most 100 MB per upload\n")
        # The upload's ID, and so its folder: uploads/<user>/<random>.
        return HookResponse(change_id=f"{user}/{secrets.token_hex(16)}", change_metadata={
            **event.upload.metadata, "owner": user})

    # Concatenation is off: a final upload could name another user's partial uploads.
    tus = TusApp(Config(store=FileStore(upload_dir), base_path="/files/", pre_create=pre_create,
                        disable_concatenation=True))

    def owned(upload_id: str, user: str) -> None:
        # Somebody else's upload does not exist, as far as this user can tell.
        if upload_id.split("/", 1)[0] != user:
            raise HTTPException(404, "no such upload")

    app = FastAPI(title="uploads")
    app.add_middleware(MethodOverrideMiddleware)
    app.state.tus = tus

    @app.post("/files/", status_code=201)
    async def create_upload(user: str = Depends(current_user)) -> Response:
        return tus.endpoints.create.response()

    @app.head("/files/{upload_id:path}")
    async def upload_status(upload_id: str, user: str = Depends(current_user)) -> Response:
        owned(upload_id, user)
        return tus.endpoints.head.response()

    @app.patch("/files/{upload_id:path}", status_code=204)
    async def upload_chunk(upload_id: str, user: str = Depends(current_user)) -> Response:
        owned(upload_id, user)
        return tus.endpoints.patch.response()

    @app.get("/files/{upload_id:path}")
    async def download(upload_id: str, user: str = Depends(current_user)) -> Response:
        owned(upload_id, user)
        return tus.endpoints.get.response()

    @app.delete("/files/{upload_id:path}", status_code=204)
    async def terminate(upload_id: str, user: str = Depends(current_user)) -> Response:
        owned(upload_id, user)
        return tus.endpoints.delete.response()

    # Discovery and CORS preflight: no authentication.
    @app.options("/files/")
    @app.options("/files/{upload_id:path}")
    async def discover() -> Response:
        return tus.endpoints.options.response()

    @app.get("/me/uploads")
    async def my_uploads(user: str = Depends(current_user)) -> list[str]:
        folder = Path(upload_dir) / user
        return sorted(f"{user}/{p.stem}" for p in folder.glob("*.info")) if folder.is_dir() else []

    @app.get("/stats")
    async def stats() -> dict[str, object]:
        numbers = tus.metrics.snapshot()  # the same numbers /metrics would show, read in-process
        return {"uploads_created": numbers.uploads_created, "uploads_finished": numbers.uploads_finished,
                "bytes_received": numbers.bytes_received, "errors": numbers.errors_by_code}

    return app


app = create_app(os.environ.get("UPLOAD_DIR", "uploads"))

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
