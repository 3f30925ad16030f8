"""Shared value types: what an upload is, independent of where it is stored."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .errors import ERR_INTERNAL_SERVER_ERROR

# ASGI, spelled out once.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class UploadInfo:
    """The state of one upload.

    Serialises to the field names of tusd's ``FileInfo`` (``ID``, ``Size``, ``SizeIsDeferred``, ``Offset``,
    ``MetaData``, ``IsPartial``, ``IsFinal``, ``PartialUploads``, ``Storage``), so ``.info`` files and hook payloads
    written for tusd are read and written unchanged.
    """

    id: str = ""
    size: int = 0
    size_is_deferred: bool = False
    offset: int = 0
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    is_partial: bool = False
    is_final: bool = False
    partial_uploads: tuple[str, ...] = ()
    storage: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def is_complete(self) -> bool:
        """All bytes are stored: the length is known and the offset reached it."""
        return not self.size_is_deferred and self.offset == self.size

    def replace(self, **changes: Any) -> UploadInfo:
        return dataclasses.replace(self, **changes)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Size": self.size,
            "SizeIsDeferred": self.size_is_deferred,
            "Offset": self.offset,
            "MetaData": dict(self.metadata),
            "IsPartial": self.is_partial,
            "IsFinal": self.is_final,
            "PartialUploads": list(self.partial_uploads) if self.partial_uploads else None,
            "Storage": dict(self.storage) if self.storage else None,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_json_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> UploadInfo:
        """Read tusd's FileInfo JSON. Field names are matched case-insensitively, as Go's decoder does."""
        fields = {str(k).lower(): v for k, v in data.items()}

        def text_map(value: Any) -> dict[str, str]:
            if not value:
                return {}
            if not isinstance(value, Mapping):
                raise ValueError("expected an object")
            return {str(k): str(v) for k, v in value.items()}

        size = fields.get("size") or 0
        offset = fields.get("offset") or 0
        if not isinstance(size, int) or not isinstance(offset, int) or size < 0 or offset < 0:
            raise ValueError("Size and Offset must be non-negative integers")
        return cls(
            id=str(fields.get("id") or ""),
            size=size,
            size_is_deferred=bool(fields.get("sizeisdeferred")),
            offset=offset,
            metadata=text_map(fields.get("metadata")),
            is_partial=bool(fields.get("ispartial")),
            is_final=bool(fields.get("isfinal")),
            partial_uploads=tuple(str(p) for p in (fields.get("partialuploads") or ())),
            storage=text_map(fields.get("storage")),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> UploadInfo:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return cls.from_json_dict(data)
        except (ValueError, TypeError) as exc:
            raise ERR_INTERNAL_SERVER_ERROR(f"stored upload info is unreadable: {exc}") from exc
