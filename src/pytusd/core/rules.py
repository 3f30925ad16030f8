"""Upload rules: declarative checks at creation, without writing a hook (Fireboom's upload profiles).

A rule set limits the size, the media type (``filetype`` metadata, wildcards such as ``image/*``), the file
extension (``filename`` metadata), requires metadata keys, and can validate the whole metadata against a JSON
Schema (with the ``jsonschema`` package, the ``rules`` extra). A violation is 400
ERR_UPLOAD_RULE_VIOLATED (413 ERR_MAX_SIZE_EXCEEDED for the size) with a message naming the rule.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import errors, extras
from ..info import UploadInfo

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

ERR_UPLOAD_RULE_VIOLATED = errors.TusError("ERR_UPLOAD_RULE_VIOLATED", "the upload breaks an upload rule", 400)


@dataclasses.dataclass(frozen=True)
class UploadRules:
    max_size: int = 0
    allowed_types: Sequence[str] = ()
    allowed_extensions: Sequence[str] = ()
    required_metadata: Sequence[str] = ()
    metadata_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.metadata_schema is not None:
            validator = _validator(self.metadata_schema)  # fail at start-up, not at the first upload
            object.__setattr__(self, "_validator", validator)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> UploadRules:
        """Rules from a JSON file: ``{"max_size": ..., "allowed_types": [...], "allowed_extensions": [...],
        "required_metadata": [...], "metadata_schema": {...}}`` (every key optional)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown upload rule(s) {', '.join(unknown)}")
        return cls(**data)

    @property
    def empty(self) -> bool:
        return self == UploadRules()

    def check_size(self, size: int) -> None:
        if self.max_size and size > self.max_size:
            raise errors.ERR_MAX_SIZE_EXCEEDED(f"upload rule max_size: at most {self.max_size} bytes")

    def check(self, info: UploadInfo) -> None:
        """Raise the first rule the new upload breaks."""
        meta = info.metadata
        if not info.size_is_deferred:
            self.check_size(info.size)
        for key in self.required_metadata:
            if not meta.get(key):
                raise ERR_UPLOAD_RULE_VIOLATED(f"upload rule required_metadata: {key!r} is missing")
        if self.allowed_types:
            filetype = meta.get("filetype", "").split(";")[0].strip().lower()
            if not any(fnmatch.fnmatchcase(filetype, pattern.lower()) for pattern in self.allowed_types):
                allowed = ", ".join(self.allowed_types)
                raise ERR_UPLOAD_RULE_VIOLATED(f"upload rule allowed_types: {filetype or 'no filetype'} is not one of {allowed}")
        if self.allowed_extensions:
            name = meta.get("filename", "").lower()
            if not any(name.endswith(ext.lower() if ext.startswith(".") else "." + ext.lower())
                       for ext in self.allowed_extensions):
                allowed = ", ".join(self.allowed_extensions)
                raise ERR_UPLOAD_RULE_VIOLATED(f"upload rule allowed_extensions: the filename must end in {allowed}")
        if self.metadata_schema is not None:
            # _validator is set by __post_init__ (object.__setattr__), so it is not one of the dataclass's fields.
            error = next(iter(self._validator.iter_errors(dict(meta))), None)  # type: ignore[attr-defined]
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "metadata"
                raise ERR_UPLOAD_RULE_VIOLATED(f"upload rule metadata_schema: {where}: {error.message}")


def _validator(schema: Mapping[str, Any]) -> Validator:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - depends on the installation
        raise ValueError(extras.missing("metadata_schema needs the jsonschema package", "rules")) from None
    cls = jsonschema.validators.validator_for(schema)
    # jsonschema's stubs want a dict: JSON objects are dicts to jsonschema (another Mapping is refused here).
    cls.check_schema(schema)  # type: ignore[arg-type]
    return cls(schema)
