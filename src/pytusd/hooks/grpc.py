"""gRPC hooks: tusd's ``HookHandler.InvokeHook`` service (the ``grpc`` extra, see :mod:`pytusd.extras`).

The messages are tusd's hook.proto (``proto/hook.proto`` here, same names and field numbers), so an existing tusd
gRPC hook server works unchanged. As in tusd's proto, headers carry their first value only and there is no
``rejectTermination``. Calls that fail with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED are retried.
The client's headers travel inside the message, as data. Only the ones named in ``forward_headers`` (tusd's
``-hooks-grpc-forward-headers``) are also sent as call metadata, as tusd does: by the rule every hook backend
follows (:func:`pytusd.hooks.base.hook_request_headers`), with lowercase keys, and never a key gRPC reserves
(``grpc-*``, ``-bin``, ``user-agent``; ``content-type`` and ``te`` are never forwarded anyway) nor a value gRPC
cannot carry (anything but visible ASCII and spaces), which is dropped. A durable event's ``EventID``
(``--hooks-durable``) travels as the ``idempotency-key`` metadata.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

from .. import extras
from .base import forwarded_header_names, hook_request_headers

try:
    import grpc
    from grpc import aio

    from .proto import hook_pb2, hook_pb2_grpc
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(extras.missing("gRPC hooks need grpcio and protobuf", "grpc")) from exc

_RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# What gRPC metadata may carry beyond the header rule: keys it keeps for itself, and values of visible ASCII only.
_RESERVED_KEYS = frozenset({"user-agent", "content-type", "te"})
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def call_metadata(request: dict[str, Any], forward: Iterable[str]) -> list[tuple[str, str]]:
    """The call metadata of a hook call: the client's header fields named in ``forward`` (see the module)."""
    incoming = request["Event"]["HTTPRequest"].get("Header") or {}
    fields = hook_request_headers({}, incoming, forward)
    return [
        (key, value)
        for key, value in ((name.lower(), value) for name, value in fields.items())
        if key not in _RESERVED_KEYS and not key.startswith("grpc-") and not key.endswith("-bin")
        and _METADATA_VALUE.fullmatch(value)
    ]


def to_message(hook_type: str, request: dict[str, Any]) -> hook_pb2.HookRequest:
    upload = request["Event"]["Upload"]
    http = request["Event"]["HTTPRequest"]
    return hook_pb2.HookRequest(
        type=hook_type,
        event=hook_pb2.Event(
            upload=hook_pb2.FileInfo(
                id=upload.get("ID") or "",
                size=upload.get("Size") or 0,
                sizeIsDeferred=bool(upload.get("SizeIsDeferred")),
                offset=upload.get("Offset") or 0,
                metaData=upload.get("MetaData") or {},
                isPartial=bool(upload.get("IsPartial")),
                isFinal=bool(upload.get("IsFinal")),
                partialUploads=upload.get("PartialUploads") or [],
                storage=upload.get("Storage") or {},
            ),
            httpRequest=hook_pb2.HTTPRequest(
                method=http.get("Method", ""),
                uri=http.get("URI", ""),
                remoteAddr=http.get("RemoteAddr", ""),
                header={name: values[0] for name, values in (http.get("Header") or {}).items() if values},
            ),
        ),
    )


def from_message(response: hook_pb2.HookResponse) -> dict[str, Any]:
    answer: dict[str, Any] = {"RejectUpload": response.rejectUpload, "StopUpload": response.stopUpload}
    if response.HasField("httpResponse"):
        answer["HTTPResponse"] = {
            "StatusCode": response.httpResponse.statusCode,
            "Body": response.httpResponse.body,
            "Header": dict(response.httpResponse.header),
        }
    if response.HasField("changeFileInfo"):
        changes = response.changeFileInfo
        answer["ChangeFileInfo"] = {
            "ID": changes.id,
            "MetaData": dict(changes.metaData) if changes.metaData else None,
            "Storage": dict(changes.storage) if changes.storage else None,
        }
    return answer


class GrpcHookBackend:
    def __init__(
        self,
        target: str,
        *,
        retry: int = 3,
        backoff: float = 1.0,
        timeout: float = 15.0,
        secure: bool = False,
        server_certificate: str = "",
        client_certificate: str = "",
        client_key: str = "",
        forward_headers: Iterable[str] = (),
    ) -> None:
        self.target = target
        self.forward_headers = forwarded_header_names(forward_headers)
        self.retry = retry
        self.backoff = backoff
        self.timeout = timeout
        self._credentials = None
        if secure:
            def read(path: str) -> bytes | None:
                if not path:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read(server_certificate),
                private_key=read(client_key),
                certificate_chain=read(client_certificate),
            )
        self._channel: aio.Channel | None = None

    def __repr__(self) -> str:
        return f"GrpcHookBackend({self.target!r})"

    def _stub(self) -> hook_pb2_grpc.HookHandlerStub:
        if self._channel is None:  # created on first use, inside the serving event loop
            self._channel = (
                aio.secure_channel(self.target, self._credentials)
                if self._credentials is not None
                else aio.insecure_channel(self.target)
            )
        return hook_pb2_grpc.HookHandlerStub(self._channel)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        message = to_message(hook_type, request)
        metadata = call_metadata(request, self.forward_headers) if self.forward_headers else None
        if request.get("EventID"):  # --hooks-durable: tusd's messages have no field for it, the metadata carries it
            metadata = [*(metadata or []), ("idempotency-key", str(request["EventID"]))]
        attempt = 0
        while True:
            try:
                return from_message(await self._stub().InvokeHook(message, timeout=self.timeout, metadata=metadata))
            except aio.AioRpcError as exc:
                if exc.code() not in _RETRIED or attempt >= self.retry:
                    raise RuntimeError(f"gRPC hook {self.target} failed: {exc.code().name} {exc.details()}") from exc
            attempt += 1
            await asyncio.sleep(self.backoff)
