"""Fireboom upload hooks: a Fireboom-style hook server decides on uploads (README, "Hooks").

``pre-create`` becomes ``POST {url}/upload/{storage}/{profile}/preUpload``: a returned ``fileKey`` becomes the
upload's ID, a returned ``error`` rejects the upload with 400 and that message. ``post-finish`` becomes
``postUpload`` with the final key; an upload terminated before it finished is reported to ``postUpload`` with an
``UploadError``. Other events are not Fireboom's and do nothing here.
"""

from __future__ import annotations

import secrets
from typing import Any

from .http import JsonPoster


class FireboomHookBackend:
    def __init__(
        self, url: str, storage: str = "tus", profile: str = "default", *, retry: int = 3, timeout: float = 60.0
    ) -> None:
        self.base = f"{url.rstrip('/')}/upload/{storage}/{profile}"
        self.storage = storage
        self.poster = JsonPoster(retry=retry, timeout=timeout, size_limit=64 * 1024)

    def __repr__(self) -> str:
        return f"FireboomHookBackend({self.base!r})"

    def _body(self, request: dict[str, Any], name: str) -> dict[str, Any]:
        upload = request["Event"]["Upload"]
        http = request["Event"]["HTTPRequest"]
        meta = upload.get("MetaData") or {}
        return {
            "__wg": {
                "user": None,
                "clientRequest": {
                    "method": http.get("Method", ""),
                    "requestURI": http.get("URI", ""),
                    "headers": {k: ", ".join(v) for k, v in (http.get("Header") or {}).items()},
                },
            },
            "file": {"name": name, "size": upload.get("Size", 0), "type": meta.get("filetype", ""),
                     "provider": self.storage},
            "meta": meta,
        }

    def _headers(self, request: dict[str, Any]) -> dict[str, str]:
        """pytusd's own fields (JsonPoster.post adds Content-Type, by the rule of every hook request): no client
        header is forwarded, the client's headers travel in the JSON body."""
        header = request["Event"]["HTTPRequest"].get("Header") or {}
        request_id = (header.get("X-Request-Id") or [secrets.token_hex(16)])[0]
        own = {"X-Request-Id": request_id[:64]}
        if request.get("EventID"):
            own["Idempotency-Key"] = str(request["EventID"])  # --hooks-durable: the same on every delivery
        return own

    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        upload = request["Event"]["Upload"]
        if hook_type == "pre-create":
            name = (upload.get("MetaData") or {}).get("filename", "")
            answer = await self.poster.post(f"{self.base}/preUpload", self._body(request, name), self._headers(request))
            answer = answer or {}
            if answer.get("error"):
                return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 400, "Body": str(answer["error"])}}
            if answer.get("fileKey"):
                return {"ChangeFileInfo": {"ID": str(answer["fileKey"])}}
            return None
        if hook_type == "post-finish":
            await self.poster.post(f"{self.base}/postUpload", self._body(request, upload["ID"]), self._headers(request))
            return None
        if hook_type == "post-terminate" and (upload.get("SizeIsDeferred") or upload.get("Offset") != upload.get("Size")):
            body = self._body(request, upload["ID"])
            body["error"] = {"name": "UploadError", "message": "the upload was terminated before it finished"}
            await self.poster.post(f"{self.base}/postUpload", body, self._headers(request))
        return None
