"""What an upload is, independent of where it is stored: its state (tusd's FileInfo), its ID, and what its
metadata says about the content."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .errors import ERR_INTERNAL_SERVER_ERROR


# The FileInfo JSON's field names as Go writes them.
_CANONICAL_FIELDS = frozenset(
    ("ID", "Size", "SizeIsDeferred", "Offset", "MetaData", "IsPartial", "IsFinal", "PartialUploads", "Storage")
)
_CANONICAL_OF = {name.lower(): name for name in _CANONICAL_FIELDS}


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
        """A copy with ``changes`` (as :func:`dataclasses.replace`, spelled out: a request makes a few)."""
        if not _FIELD_NAMES.issuperset(changes):
            raise TypeError(f"UploadInfo has no field {sorted(set(changes) - _FIELD_NAMES)}")
        get = changes.get
        return UploadInfo(
            get("id", self.id), get("size", self.size), get("size_is_deferred", self.size_is_deferred),
            get("offset", self.offset), get("metadata", self.metadata), get("is_partial", self.is_partial),
            get("is_final", self.is_final), get("partial_uploads", self.partial_uploads), get("storage", self.storage),
        )

    def with_storage(self, changes: Mapping[str, str | None]) -> UploadInfo:
        """A copy whose ``storage`` has ``changes``: a value sets its key, None removes it."""
        merged = {k: v for k, v in self.storage.items() if k not in changes}
        merged.update({k: v for k, v in changes.items() if v is not None})
        return self.replace(storage=merged)

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
        # What pytusd and tusd write has exactly the canonical names; other spellings are matched without regard to
        # case, and the last of two spellings wins.
        fields: Mapping[Any, Any] = data
        if not _CANONICAL_FIELDS.issuperset(data):
            fields = {_CANONICAL_OF.get(str(k).lower(), k): v for k, v in data.items()}

        def text_map(value: Any) -> dict[str, str]:
            if not value:
                return {}
            if not isinstance(value, Mapping):
                raise ValueError("expected an object")
            return {str(k): str(v) for k, v in value.items()}

        size = fields.get("Size") or 0
        offset = fields.get("Offset") or 0
        if not isinstance(size, int) or not isinstance(offset, int) or size < 0 or offset < 0:
            raise ValueError("Size and Offset must be non-negative integers")
        return cls(
            id=str(fields.get("ID") or ""),
            size=size,
            size_is_deferred=bool(fields.get("SizeIsDeferred")),
            offset=offset,
            metadata=text_map(fields.get("MetaData")),
            is_partial=bool(fields.get("IsPartial")),
            is_final=bool(fields.get("IsFinal")),
            partial_uploads=tuple(str(p) for p in (fields.get("PartialUploads") or ())),
            storage=text_map(fields.get("Storage")),
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


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(UploadInfo))


# --- upload IDs ----------------------------------------------------------------------------------------------------

_ID_SEGMENT = re.compile(r"[A-Za-z0-9\-._~%!$'()*+,;=:@]{1,200}")
MAX_ID_LENGTH = 500
# The names stores and lockers keep beside an upload's own (``<id>.info``, ``<id>.lock``, ``<id>.part``, ...): an
# ID ending so would name another upload's file or object, so no upload may have one (a hook choosing IDs from
# client input could otherwise overwrite, or delete, another upload's state).
RESERVED_ID_SUFFIXES = (".info", ".part", ".lock", ".stop", ".concat", ".pending", ".expired", ".tmp")


def new_upload_id() -> str:
    """128 random bits as 32 lowercase hex characters, like tusd's IDs."""
    return secrets.token_hex(16)


@functools.lru_cache(maxsize=4096)  # asked by the app, the locker and the store for every request's ID
def is_valid_upload_id(upload_id: str) -> bool:
    """Whether an ID may name an upload: URL-safe characters (tusd's set), segments separated by ``/``, no empty,
    ``.`` or ``..`` segment, no leading or trailing ``/``, bounded length. Anything else never reaches a store, so
    an ID taken from a URL cannot point outside the storage (``..``, absolute paths, NUL, backslashes); and no
    :data:`RESERVED_ID_SUFFIXES`, which would name another upload's files."""
    if not upload_id or len(upload_id) > MAX_ID_LENGTH or upload_id.lower().endswith(RESERVED_ID_SUFFIXES):
        return False
    for segment in upload_id.split("/"):
        if segment in (".", "..") or not _ID_SEGMENT.fullmatch(segment):
            return False
    return True


# --- what the metadata says about the content --------------------------------------------------------------------

# Media types a browser may render inline; anything else is served as an attachment (HTML and SVG could carry
# scripts, PDF readers are a common attack surface). The same list tusd uses.
INLINE_MEDIA_TYPES = frozenset(
    {
        "text/plain",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/bmp",
        "image/webp",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/webm",
        "audio/ogg",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "application/ogg",
    }
)

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Optional whitespace is SP / HTAB only (RFC 9110 OWS): ``\s`` would let CR/LF into the Content-Type we send.
_MEDIA_TYPE = re.compile(
    rf"({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*)[ \t]*;?[ \t]*"
)


def download_headers(meta: Mapping[str, str]) -> tuple[str, str]:
    """(Content-Type, Content-Disposition) for serving an upload.

    The type comes from the ``filetype`` metadata when it is a well-formed media type, else
    ``application/octet-stream``; ``inline`` only for :data:`INLINE_MEDIA_TYPES`. The ``filename`` metadata goes
    into an ASCII fallback with quotes, backslashes and control characters replaced, plus an RFC 5987
    ``filename*`` carrying the exact UTF-8 name percent-encoded, so no metadata value can inject a header.
    """
    filetype = meta.get("filetype", "")
    match = _MEDIA_TYPE.fullmatch(filetype) if filetype.isascii() else None
    if match:
        content_type = filetype.strip()
        essence = f"{match.group(1)}/{match.group(2)}".lower()
        disposition = "inline" if essence in INLINE_MEDIA_TYPES else "attachment"
    else:
        content_type = "application/octet-stream"
        disposition = "attachment"
    filename = meta.get("filename")
    if filename is not None:
        fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in filename)
        disposition += f'; filename="{fallback}"'
        if fallback != filename:
            # errors="replace": a name set by a hook may hold lone surrogates, which UTF-8 cannot encode.
            disposition += "; filename*=UTF-8''" + urllib.parse.quote(filename, safe="", errors="replace")
    return content_type, disposition
