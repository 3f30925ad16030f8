"""The rules that guard every request path, each written once: admission, append and access.

Every way into an upload goes through here, whatever protocol or method carried it:

- **Admission** (:meth:`Policy.admit`): every upload that comes into being - a tus ``POST``, creation-with-upload,
  a final made by concatenation, an IETF-draft creation at any interop version - passes the same checks in the same
  order: its size against ``max_size`` (and int64), its metadata against the metadata limits, the upload rules,
  then the pre-create hook and the ``pre_create`` callback (which may reject it or change its ID, metadata and
  storage). A length declared later (creation-defer-length, or a draft upload completed by a request) passes the
  same size rule (:meth:`Policy.check_size`).
- **Append** (:meth:`Policy.check_append`): every write into an upload - tus ``PATCH``, creation-with-upload, the
  draft's appends - is refused for final uploads (403 ``ERR_MODIFY_FINAL``) and at any offset but the stored one
  (409 ``ERR_MISMATCHED_OFFSET``). :meth:`pytusd.core.uploads.Uploads.write_body`, the one way bytes reach a store,
  applies it, so no flow can skip it.
- **Access** (:meth:`Policy.access`): the pre-access hook sees every request that reads or changes an existing
  upload (``HEAD``, ``PATCH``, ``GET``, ``DELETE`` in both protocols) and every partial upload a new final names:
  creating ``Upload-Concat: final;<url>`` reads that partial's bytes, so it is refused like a ``GET`` would be.
- **Concatenation limits** (:meth:`Policy.check_concat`): at most ``max_concat_partials`` partials per final,
  checked before any of them is looked up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, cast

from .. import errors
from ..hooks import HookResponse, Hooks
from ..info import MAX_ID_LENGTH, RESERVED_ID_SUFFIXES, UploadInfo, is_valid_upload_id
from ..observe import logs
from . import grammar
from . import rules as rules_module
from .config import Config
from .events import HTTPRequestInfo, run_callback
from .rules import UploadProfiles, UploadRules

if TYPE_CHECKING:
    from .http import Request

StoreOperation = Callable[[str, str | None], contextlib.AbstractContextManager[None]]


def event_request(request: Request, http: dict[str, object] | None = None) -> HTTPRequestInfo:
    """The request as events and callbacks see it (what hooks get as ``HTTPRequest``)."""
    state = request.scope.get("state")
    return HTTPRequestInfo.from_hook_http(http if http is not None else request.hook_http(),
                                          logs.request_id_var.get(), state if state is not None else {})


def apply_pre_create(info: UploadInfo, answer: HookResponse) -> UploadInfo:
    """pre-create: reject the upload, or change its ID, metadata and storage before it exists."""
    if answer.reject_upload:
        raise answer.error(errors.ERR_UPLOAD_REJECTED)
    if answer.change_id:
        if not is_valid_upload_id(answer.change_id):
            raise errors.ERR_INTERNAL_SERVER_ERROR(
                "the pre-create hook chose an ID that cannot name an upload (URL-safe characters in segments, at most "
                f"{MAX_ID_LENGTH} in all, not ending in {', '.join(RESERVED_ID_SUFFIXES)})"
            )
        info = info.replace(id=answer.change_id)
    if answer.change_metadata is not None:
        info = info.replace(metadata=answer.change_metadata)
    if answer.change_storage is not None:
        info = info.replace(storage=answer.change_storage)
    return info


@contextlib.contextmanager
def _untimed(operation: str, upload_id: str | None = None) -> Iterator[None]:
    yield


class Policy:
    """Admission, append and access rules of one app (see the module docstring)."""

    def __init__(self, config: Config, store_operation: StoreOperation = _untimed) -> None:
        self.config = config
        self.hooks = cast("Hooks | None", config.hooks)  # Config.__post_init__ wraps a plain callable in Hooks
        self.store = config.store
        self._store_operation = store_operation
        # The largest upload: the server's limit or an upload rule's, whichever is lower; int64 in any case, which
        # is what tusd (and any reader of the .info) can represent.
        limits = [config.max_size, config.rules.max_size if config.rules else 0]
        self.size_limit = min((x for x in limits if x), default=grammar.INT64_MAX)
        # Named profiles: each upload's rules are its profile's (and its hooks, which Config wires into Hooks).
        self.profiles = config.rules if isinstance(config.rules, UploadProfiles) else None

    def rules_of(self, info: UploadInfo | None) -> UploadRules | None:
        """The upload rules that apply to an upload: the server's one set, or the profile stored with the upload
        (None before a profile is known: at creation, :meth:`admit` chooses it)."""
        rules = self.config.rules
        if isinstance(rules, UploadProfiles):
            return rules.of(info) if info is not None else None
        return rules

    # -- admission ------------------------------------------------------------------------------------------------

    def check_size(self, size: int, info: UploadInfo | None = None) -> None:
        """An upload's length, known at creation or declared later for ``info``: 413 ERR_MAX_SIZE_EXCEEDED past
        the limits (with profiles, the upload's profile's; before one is chosen, the largest any admits)."""
        if size > grammar.INT64_MAX:
            raise errors.ERR_MAX_SIZE_EXCEEDED("the upload would be longer than 2^63-1 bytes")
        if self.config.max_size and size > self.config.max_size:
            raise errors.ERR_MAX_SIZE_EXCEEDED()
        rules = self.rules_of(info)
        if rules is not None:
            rules.check_size(size)
        elif self.profiles is not None and self.profiles.max_size and size > self.profiles.max_size:
            raise errors.ERR_MAX_SIZE_EXCEEDED(f"no upload profile admits more than {self.profiles.max_size} bytes")

    def check_metadata(self, metadata: Mapping[str, str]) -> None:
        """The metadata limits, on the metadata as its ``Upload-Metadata`` header would be (431)."""
        config = self.config
        if config.max_metadata_pairs and len(metadata) > config.max_metadata_pairs:
            raise errors.ERR_METADATA_TOO_LARGE(f"the upload has more than {config.max_metadata_pairs} metadata pairs")
        if config.max_metadata_size and len(grammar.serialize_metadata(metadata)) > config.max_metadata_size:
            raise errors.ERR_METADATA_TOO_LARGE(f"the upload's metadata is longer than {config.max_metadata_size} bytes")

    async def admit(self, request: Request, info: UploadInfo) -> tuple[UploadInfo, HookResponse | None]:
        """Every new upload, from every path: limits, upload rules, the pre-create hook, the pre-create callback.

        Returns the info as the hook and callback changed it, and their merged answer (for the 201 response)."""
        if not info.size_is_deferred:
            self.check_size(info.size)  # the server's limits (with profiles, the largest any profile admits)
        self.check_metadata(info.metadata)
        profile = ""
        if self.profiles is not None:
            # The profile as the path, the client's metadata or the default name it; stored with the upload.
            profile = self.profiles.choose(info.metadata, request.mount_prefix + request.path)
            if profile:
                info = info.replace(metadata={**info.metadata, self.profiles.metadata_key: profile})
                if not info.size_is_deferred:
                    self.check_size(info.size, info)
        rules = self.profiles.named(profile) if self.profiles is not None and profile else self.rules_of(None)
        if rules is not None:
            rules.check(info)
        answer = None
        if self.hooks is not None and self.hooks.wants("pre-create"):
            answer = await self.hooks.call("pre-create", info, request.hook_http())
            info = apply_pre_create(info, answer)
        if self.config.pre_create is not None:
            extra = await run_callback(self.config.pre_create, "pre-create", info, event_request(request))
            info = apply_pre_create(info, extra)
            if answer is None:
                answer = extra
            else:
                answer.merge(extra)
        if self.profiles is not None:
            info = self._profile_after_hooks(info, profile)
        return info, answer

    def _profile_after_hooks(self, info: UploadInfo, before: str) -> UploadInfo:
        """The pre-create hook or callback may choose another profile (by the metadata field): the upload must then
        pass that profile's rules too. One whose answer drops the field keeps the profile chosen before."""
        assert self.profiles is not None
        key = self.profiles.metadata_key
        chosen = info.metadata.get(key) or before
        if not chosen:
            raise rules_module.ERR_UNKNOWN_UPLOAD_PROFILE(f"the upload names no upload profile (metadata {key!r})")
        if info.metadata.get(key) != chosen:
            info = info.replace(metadata={**info.metadata, key: chosen})
        if chosen != before:
            if not info.size_is_deferred:
                self.check_size(info.size, info)
            self.profiles.named(chosen).check(info)
        return info

    def check_concat(self, urls: list[str]) -> None:
        """A final's list of partials, before any is looked up: at most ``max_concat_partials`` (400)."""
        limit = self.config.max_concat_partials
        if limit and len(urls) > limit:
            raise errors.ERR_INVALID_CONCAT(f"a final upload may name at most {limit} partial uploads")

    # -- append ---------------------------------------------------------------------------------------------------

    def check_append(self, info: UploadInfo, offset: int) -> None:
        """Whether a request may write into ``info`` at ``offset``: never into a final, only at the stored offset,
        and, with profiles, only under a profile that is still defined."""
        if self.profiles is not None:
            self.profiles.of(info)
        if info.is_final:
            raise errors.ERR_MODIFY_FINAL()
        if offset != info.offset:
            raise errors.ERR_MISMATCHED_OFFSET(headers={"Upload-Offset": str(info.offset)})

    # -- access ---------------------------------------------------------------------------------------------------

    @property
    def checks_access(self) -> bool:
        return self.hooks is not None and self.hooks.wants("pre-access")

    async def access(self, request: Request, upload_id: str, info: UploadInfo | None = None) -> None:
        """pre-access: the hook sees the upload and the request and may refuse it with ``RejectUpload`` (403
        ERR_ACCESS_DENIED, or its own status, body and headers). ``info`` when the caller has it already."""
        if self.hooks is None or not self.hooks.wants("pre-access"):
            return
        if info is None:
            with self._store_operation("get", upload_id):
                info = await (await self.store.get(upload_id)).info()
        answer = await self.hooks.call("pre-access", info, request.hook_http())
        if answer.reject_upload:
            raise answer.error(errors.ERR_ACCESS_DENIED)
