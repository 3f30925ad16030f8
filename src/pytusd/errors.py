"""Errors with a tus error code and an HTTP status.

Every failure a client can see is a :class:`TusError`. The app renders it once, the way tusd does:
``text/plain`` body ``"ERR_CODE: message\\n"`` with the status, plus any extra headers. The codes are tusd's, so
clients and dashboards that know tusd read them unchanged; the messages are ours.
"""

from __future__ import annotations

import contextvars
import errno
from collections.abc import Mapping


class TusError(Exception):
    """A request failed in a way the client is told about.

    ``code`` is the machine-readable tus error code (``ERR_...``), ``status`` the HTTP status, ``headers`` extra
    response headers and ``body`` replaces the default ``"CODE: message\\n"`` body when given.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self._body = body

    @property
    def body(self) -> str:
        return self._body if self._body is not None else f"{self.code}: {self.message}\n"

    def __call__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
    ) -> TusError:
        """A fresh copy of this error, optionally with another message, status, headers or body.

        The catalogue below holds templates; ``raise ERR_UPLOAD_NOT_FOUND()`` raises a new instance each time, so
        tracebacks never pile up on a shared object.
        """
        merged = dict(self.headers)
        if headers:
            merged.update(headers)
        return TusError(
            self.code,
            self.message if message is None else message,
            self.status if status is None else status,
            merged,
            self._body if body is None else body,
        )

    def is_(self, *kinds: TusError) -> bool:
        """Whether this error is one of ``kinds`` (templates of the catalogue below): ``exc.is_(ERR_UPLOAD_NOT_FOUND)``.
        Errors are told apart by their code, in this one place, never by comparing strings elsewhere."""
        return any(self.code == kind.code for kind in kinds)

    def __repr__(self) -> str:
        return f"TusError({self.code!r}, {self.message!r}, {self.status})"


def _error(code: str, message: str, status: int) -> TusError:
    return TusError(code, message, status)


def storage_error(exc: OSError) -> TusError:
    """What a client is told when the local storage fails: 507 when it is full, a clear 500 when it is read-only
    or not writable (permissions), else 500 with the OS error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ERR_STORAGE_FULL()
    if exc.errno == errno.EROFS:
        return ERR_STORAGE_READ_ONLY()
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ERR_STORAGE_READ_ONLY(f"the storage is not writable: {exc.strerror or exc}")
    return ERR_INTERNAL_SERVER_ERROR(f"storage error: {exc.strerror or exc}")


# Exception types, by name, that say a remote service could not be reached (connection refused, name not resolved,
# connect timeout), from the SDKs pytusd uses: botocore, azure-core, requests/urllib3, google-auth, redis-py. Named
# rather than imported so that this module needs none of them.
_UNREACHABLE_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
    "ServiceRequestError", "ServiceRequestTimeoutError", "NewConnectionError", "MaxRetryError", "ConnectTimeout",
    "TransportError", "RetryError", "ServiceUnavailable",
})

# Set while pytusd's start-up checks run: they log the one line themselves.
quiet_unavailable: contextvars.ContextVar[bool] = contextvars.ContextVar("quiet_unavailable", default=False)

# Seconds a client is asked to wait (Retry-After) when a backend cannot be reached.
UNAVAILABLE_RETRY_AFTER = 5


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a remote service could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)) or type(current).__name__ in _UNREACHABLE_NAMES:
            return True
        if isinstance(current, OSError) and current.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                              errno.ENETUNREACH, errno.ETIMEDOUT):
            return True
        if type(current).__name__ == "gaierror":
            return True
        current = current.__cause__ or current.__context__
    return False


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message's lines joined, or its type's name."""
    text = " ".join(str(exc).split()).rstrip(".")
    return text or type(exc).__name__


def unavailable(template: TusError, what: str, exc: BaseException) -> TusError:
    """``template`` (ERR_STORAGE_UNAVAILABLE or ERR_LOCKER_UNAVAILABLE) for a backend that cannot be reached,
    logged once as one line (no traceback): ``what`` names the backend and its address."""
    import logging

    if not quiet_unavailable.get():
        logging.getLogger("pytusd").error("%s cannot be reached: %s", what, one_line(exc))
    return template()  # the address stays in the log: it is the operator's business, not the client's


# The catalogue. Each is a template: ``raise ERR_X()`` or ``raise ERR_X("more precise message")``.
ERR_UNSUPPORTED_VERSION = _error("ERR_UNSUPPORTED_VERSION", "Tus-Resumable must be 1.0.0", 412)
ERR_MAX_SIZE_EXCEEDED = _error("ERR_MAX_SIZE_EXCEEDED", "upload is larger than the server allows", 413)
ERR_INVALID_CONTENT_TYPE = _error(
    "ERR_INVALID_CONTENT_TYPE", "Content-Type must be application/offset+octet-stream", 400
)
ERR_INVALID_UPLOAD_LENGTH = _error("ERR_INVALID_UPLOAD_LENGTH", "Upload-Length is missing or invalid", 400)
ERR_INVALID_OFFSET = _error("ERR_INVALID_OFFSET", "Upload-Offset is missing or invalid", 400)
ERR_UPLOAD_NOT_FOUND = _error("ERR_UPLOAD_NOT_FOUND", "no upload at this URL", 404)
ERR_UPLOAD_LOCKED = _error("ERR_UPLOAD_LOCKED", "upload is locked by another request", 423)
ERR_LOCK_TIMEOUT = _error("ERR_LOCK_TIMEOUT", "timed out waiting for the upload's lock", 500)
ERR_MISMATCHED_OFFSET = _error("ERR_MISMATCHED_OFFSET", "Upload-Offset does not match the stored offset", 409)
ERR_UPLOAD_SIZE_EXCEEDED = _error("ERR_UPLOAD_SIZE_EXCEEDED", "data goes past the upload's length", 413)
ERR_NOT_IMPLEMENTED = _error("ERR_NOT_IMPLEMENTED", "this server does not support that feature", 501)
ERR_UPLOAD_NOT_FINISHED = _error("ERR_UPLOAD_NOT_FINISHED", "a partial upload is not finished", 400)
ERR_INVALID_CONCAT = _error("ERR_INVALID_CONCAT", "Upload-Concat is invalid", 400)
ERR_CONCATENATION_UNSUPPORTED = _error(
    "ERR_CONCATENATION_UNSUPPORTED", "this server does not support Upload-Concat", 400
)
ERR_MODIFY_FINAL = _error("ERR_MODIFY_FINAL", "a final upload cannot be modified", 403)
ERR_AMBIGUOUS_UPLOAD_LENGTH = _error(
    "ERR_AMBIGUOUS_UPLOAD_LENGTH", "send Upload-Length or Upload-Defer-Length, not both", 400
)
ERR_INVALID_UPLOAD_LENGTH_DEFER = _error("ERR_INVALID_UPLOAD_LENGTH_DEFER", "Upload-Defer-Length must be 1", 400)
ERR_UPLOAD_STOPPED = _error("ERR_UPLOAD_STOPPED", "the server stopped this upload", 400)
ERR_UPLOAD_REJECTED = _error("ERR_UPLOAD_REJECTED", "the server rejected this upload", 400)
ERR_UPLOAD_TERMINATION_REJECTED = _error(
    "ERR_UPLOAD_TERMINATION_REJECTED", "the server rejected terminating this upload", 400
)
ERR_UPLOAD_INTERRUPTED = _error(
    "ERR_UPLOAD_INTERRUPTED", "another request for this upload took over; the data received so far is stored", 400
)
ERR_SERVER_SHUTDOWN = _error(
    "ERR_SERVER_SHUTDOWN", "the server is shutting down; the data received so far is stored", 503
)
ERR_ORIGIN_NOT_ALLOWED = _error("ERR_ORIGIN_NOT_ALLOWED", "this Origin is not allowed", 403)
ERR_UNEXPECTED_EOF = _error("ERR_UNEXPECTED_EOF", "the request body ended early", 400)
ERR_READ_TIMEOUT = _error("ERR_READ_TIMEOUT", "no data arrived within the network timeout", 500)
ERR_CONNECTION_RESET = _error("ERR_CONNECTION_RESET", "the connection was reset", 500)
ERR_INTERNAL_SERVER_ERROR = _error("ERR_INTERNAL_SERVER_ERROR", "internal server error", 500)
ERR_INVALID_HEADER = _error("ERR_INVALID_HEADER", "a request header is invalid", 400)
ERR_RANGE_NOT_SATISFIABLE = _error("ERR_RANGE_NOT_SATISFIABLE", "the requested range is not available", 416)
ERR_METHOD_NOT_ALLOWED = _error("ERR_METHOD_NOT_ALLOWED", "method not allowed here", 405)
ERR_STORAGE_FULL = _error("ERR_STORAGE_FULL", "the storage is full; the data received so far is stored", 507)
# Not tusd's (tusd answers 500 ERR_INTERNAL_SERVER_ERROR with the OS error): a read-only or non-writable storage.
ERR_STORAGE_READ_ONLY = _error(
    "ERR_STORAGE_READ_ONLY", "the storage is read-only; the data received so far is stored", 500
)
# Not tusd's (tusd answers 500 with the SDK's error): the storage or the locker cannot be reached, a passing
# condition for the client, which retries after Retry-After seconds. Lock timeouts stay tusd's 500 ERR_LOCK_TIMEOUT.
ERR_STORAGE_UNAVAILABLE = TusError(
    "ERR_STORAGE_UNAVAILABLE", "the storage cannot be reached; retry later", 503,
    {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
)
ERR_LOCKER_UNAVAILABLE = TusError(
    "ERR_LOCKER_UNAVAILABLE", "the locker cannot be reached; retry later", 503,
    {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
)
# Beyond tusd: --max-concurrent-uploads (503) and --max-uploads-per-client (429), with Retry-After.
ERR_TOO_MANY_UPLOADS = _error(
    "ERR_TOO_MANY_UPLOADS", "the server is receiving as many uploads as it allows; retry later", 503
)
ERR_TOO_MANY_CLIENT_UPLOADS = _error(
    "ERR_TOO_MANY_CLIENT_UPLOADS", "this client is sending as many uploads at once as the server allows; retry later", 429
)
ERR_PRECONDITION_FAILED = _error("ERR_PRECONDITION_FAILED", "a precondition of the request does not hold", 412)
ERR_CHECKSUM_MISMATCH = _error("ERR_CHECKSUM_MISMATCH", "the data does not match Upload-Checksum; nothing was stored", 460)
ERR_UNSUPPORTED_CHECKSUM_ALGORITHM = _error(
    "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM", "this checksum algorithm is not supported; see Tus-Checksum-Algorithm", 400
)
ERR_INVALID_CHECKSUM = _error("ERR_INVALID_CHECKSUM", "Upload-Checksum must be '<algorithm> <base64 digest>'", 400)
ERR_UPLOAD_EXPIRED = _error("ERR_UPLOAD_EXPIRED", "this upload expired before it was finished and was removed", 410)
ERR_INCOMPLETE_UPLOAD = _error("ERR_INCOMPLETE_UPLOAD", "cannot stream non-finished upload", 400)
ERR_ACCESS_DENIED = _error("ERR_ACCESS_DENIED", "access to this upload was denied", 403)
ERR_INVALID_METADATA = _error(
    "ERR_INVALID_METADATA", "Upload-Metadata must be comma-separated '<key> <base64 value>' pairs, keys unique", 400
)
ERR_METADATA_TOO_LARGE = _error("ERR_METADATA_TOO_LARGE", "Upload-Metadata is larger than this server allows", 431)
ERR_HEADERS_TOO_LARGE = _error(
    "ERR_HEADERS_TOO_LARGE", "the request's header fields are larger than this server allows", 431
)
