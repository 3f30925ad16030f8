"""Upload rules: declarative checks at creation, without writing a hook (Fireboom's upload profiles).

A rule set limits the size, the media type (``filetype`` metadata, wildcards such as ``image/*``), the file
extension (``filename`` metadata), requires metadata keys, can validate the whole metadata against a JSON
Schema (with the ``jsonschema`` package, the ``rules`` extra), and can name the hooks that run for its uploads. A
violation is 400 ERR_UPLOAD_RULE_VIOLATED (413 ERR_MAX_SIZE_EXCEEDED for the size) with a message naming the rule.

:class:`UploadProfiles` holds several named rule sets; each upload gets one, chosen at creation by the pre-create
hook's answer, else by the path it is created under, else by a metadata field, else the default. The chosen name is
stored in the upload's metadata (under that same field), so every later request, hook and restart sees it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import errors, extras
from ..hooktypes import HOOK_TYPES
from ..info import UploadInfo

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

ERR_UPLOAD_RULE_VIOLATED = errors.TusError("ERR_UPLOAD_RULE_VIOLATED", "the upload breaks an upload rule", 400)
ERR_UNKNOWN_UPLOAD_PROFILE = errors.TusError("ERR_UNKNOWN_UPLOAD_PROFILE", "the upload names no known upload profile",
                                             400)


@dataclasses.dataclass(frozen=True)
class UploadRules:
    max_size: int = 0
    allowed_types: Sequence[str] = ()
    allowed_extensions: Sequence[str] = ()
    required_metadata: Sequence[str] = ()
    metadata_schema: Mapping[str, Any] | None = None
    hooks: Sequence[str] | None = None  # the hook types that run for uploads under these rules (None: every one)

    def __post_init__(self) -> None:
        if self.hooks is not None:
            unknown = sorted(set(self.hooks) - set(HOOK_TYPES))
            if unknown:
                raise ValueError(f"upload rule hooks: unknown hook type(s) {', '.join(unknown)}")
        if self.metadata_schema is not None:
            validator = _validator(self.metadata_schema)  # fail at start-up, not at the first upload
            object.__setattr__(self, "_validator", validator)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> UploadRules:
        """Rules from a JSON file: ``{"max_size": ..., "allowed_types": [...], "allowed_extensions": [...],
        "required_metadata": [...], "metadata_schema": {...}, "hooks": [...]}`` (every key optional). A file of
        profiles is read by :func:`from_file`."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, where: str) -> UploadRules:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: upload rules must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown upload rule(s) {', '.join(unknown)}")
        return cls(**data)

    def allows_hook(self, hook_type: str) -> bool:
        return self.hooks is None or hook_type in self.hooks

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


@dataclasses.dataclass(frozen=True)
class UploadProfiles:
    """Named rule sets; each upload is created under one and keeps it (see the module docstring).

    ``metadata_key`` is the metadata field that names an upload's profile (the client may send it; the choice is
    stored there); ``paths`` maps the path an upload is created under (a prefix of the mount point and path, such
    as ``/avatars/``) to a profile and outranks the client's field; ``default`` is the profile of an upload nothing
    else chose (without one, such an upload is refused)."""

    profiles: Mapping[str, UploadRules]
    default: str = ""
    metadata_key: str = "profile"
    paths: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError("upload profiles: at least one profile is needed")
        named = [self.default] if self.default else []
        unknown = sorted({name for name in [*named, *self.paths.values()] if name not in self.profiles})
        if unknown:
            raise ValueError(f"upload profiles: {', '.join(unknown)} named but not defined")
        if not self.metadata_key:
            raise ValueError("upload profiles: the profile's metadata field needs a name")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> UploadProfiles:
        """``{"profiles": {name: rules, ...}, "default_profile": name, "profile_metadata": field,
        "profile_paths": {prefix: name}}``; the rules of each profile as in :meth:`UploadRules.from_file`."""
        unknown = sorted(set(data) - {"profiles", "default_profile", "profile_metadata", "profile_paths"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} beside the profiles")
        profiles = data["profiles"]
        if not isinstance(profiles, dict):
            raise ValueError(f"{where}: profiles must be a JSON object of name -> rules")
        return cls(
            {name: UploadRules.from_json(rules, f"{where}: profile {name!r}") for name, rules in profiles.items()},
            default=data.get("default_profile", ""),
            metadata_key=data.get("profile_metadata", "profile"),
            paths=data.get("profile_paths", {}),
        )

    @property
    def max_size(self) -> int:
        """The largest upload any profile admits (0: one of them sets no limit)."""
        sizes = [rules.max_size for rules in self.profiles.values()]
        return 0 if 0 in sizes else max(sizes)

    def named(self, name: str) -> UploadRules:
        rules = self.profiles.get(name)
        if rules is None:
            raise ERR_UNKNOWN_UPLOAD_PROFILE(f"upload profile {name!r} is not defined")
        return rules

    def choose(self, metadata: Mapping[str, str], path: str) -> str:
        """The profile of a new upload before any hook ran: by path, else by the metadata field, else the default
        ("" when none applies)."""
        prefixes = [prefix for prefix in self.paths if path.startswith(prefix)]
        if prefixes:
            return self.paths[max(prefixes, key=len)]
        return metadata.get(self.metadata_key) or self.default

    def of(self, info: UploadInfo) -> UploadRules:
        """The rules of an existing upload, from the profile stored with it."""
        name = info.metadata.get(self.metadata_key, "")
        if not name:
            raise ERR_UNKNOWN_UPLOAD_PROFILE(f"the upload has no upload profile (metadata {self.metadata_key!r})")
        return self.named(name)

    def allows_hook(self, hook_type: str, info: UploadInfo) -> bool:
        """Whether a hook runs for the upload: its profile lists it (an upload without a profile yet: every hook)."""
        rules = self.profiles.get(info.metadata.get(self.metadata_key, ""))
        return rules is None or rules.allows_hook(hook_type)


def from_file(path: str | os.PathLike[str]) -> UploadRules | UploadProfiles:
    """A rules file: one set of rules, or named profiles when it has a ``profiles`` key."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and "profiles" in data:
        return UploadProfiles.from_json(data, str(path))
    return UploadRules.from_json(data, str(path))


def _validator(schema: Mapping[str, Any]) -> Validator:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - depends on the installation
        raise ValueError(extras.missing("metadata_schema needs the jsonschema package", "rules")) from None
    cls = jsonschema.validators.validator_for(schema)
    # jsonschema's stubs want a dict: JSON objects are dicts to jsonschema (another Mapping is refused here).
    cls.check_schema(schema)  # type: ignore[arg-type]
    return cls(schema)
