"""What the ``pytusd`` command checks before it serves: can the storage, the locker and the blocking hooks' server
be reached, and can the upload directory take an upload?

Each problem is one log line, which says what pytusd does about it:

- a backend that cannot be reached now (Redis down, an S3 endpoint that refuses connections, an upload directory
  that cannot be written): ERROR (WARNING for the upload directory), and pytusd starts *not ready* (``/ready``
  answers 503). ``/ready`` asks again at every poll, so it turns 200 once the backend is back; requests meanwhile
  get 503 ``ERR_STORAGE_UNAVAILABLE`` / ``ERR_LOCKER_UNAVAILABLE`` with Retry-After.
- a misconfiguration that can never work (the bucket does not exist, the credentials are refused, Redis refuses
  the password): one ERROR line and exit status 2 (:class:`Fatal`).
- the server of a blocking hook (pre-create, pre-finish, pre-terminate, pre-access) cannot be reached: WARNING;
  each hook call retries it (``--hooks-http-retry``), and it may well come up after pytusd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .. import errors
from ..core.config import Config
from ..lockers import base as lockers
from ..stores import base as stores

log = logging.getLogger("pytusd")

# How long the start-up checks may take in all (a backend that hangs is "cannot be reached").
CHECK_TIMEOUT = 5.0
BLOCKING_HOOKS = frozenset({"pre-create", "pre-finish", "pre-terminate", "pre-access"})
NOT_READY = "starting anyway, not ready (/ready answers 503) until it can"

# S3 error codes that mean the configuration can never work.
_S3_FATAL = {
    "NoSuchBucket": "does not exist",
    "404": "does not exist",
    "NotFound": "does not exist",
    "InvalidAccessKeyId": "refused the access key (InvalidAccessKeyId)",
    "SignatureDoesNotMatch": "refused the secret key (SignatureDoesNotMatch)",
    "AccessDenied": "denied HeadBucket (AccessDenied: check the credentials and s3:ListBucket)",
    "403": "denied HeadBucket (403: check the credentials and s3:ListBucket)",
}


class Fatal(Exception):
    """A configuration that can never work: the command logs the message and exits with status 2."""


async def check(config: Config, hook_servers: Sequence[tuple[str, str, list[str]]] = ()) -> list[str]:
    """Check the store, the locker and ``hook_servers`` (``(flag, target, events)``); log one line per problem.

    Returns the parts that are not ready; raises :class:`Fatal` for a configuration that can never work."""
    token = errors.quiet_unavailable.set(True)  # this module logs the one line itself
    try:
        results = await asyncio.gather(_store(config.store), _locker(config.locker, config.store),
                                       *(_hook_server(*server) for server in hook_servers))
    finally:
        errors.quiet_unavailable.reset(token)
    return [part for part in results if part]


async def _timed(call: Any) -> None:
    async with asyncio.timeout(CHECK_TIMEOUT):
        await call


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return " ".join(exc.strerror.split())
    return errors.one_line(exc)


async def _store(store: Any) -> str:
    kind = type(store).__name__
    if kind == "FileStore":
        try:
            await _timed(store.ready())
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is one line
            log.warning("the upload directory %s cannot take uploads (%s); %s", store.root, _why(exc), NOT_READY)
            return "store"
        return ""
    if kind == "S3Store":
        where = getattr(getattr(store.client, "meta", None), "endpoint_url", "") or "the default endpoint"
        try:
            await _timed(store.ready())
        except Exception as exc:  # noqa: BLE001
            code = _s3_code(exc)
            if code in _S3_FATAL:
                raise Fatal(f"the S3 bucket {store.bucket!r} at {where} {_S3_FATAL[code]}; exiting") from exc
            log.error("the S3 storage at %s (bucket %r) cannot be reached: %s; %s", where, store.bucket, _why(exc),
                      NOT_READY)
            return "store"
        return ""
    if kind == "GCSStore":
        try:
            await _timed(store.ready())
        except Exception as exc:  # noqa: BLE001
            status = getattr(exc, "code", None)
            if status == 404:
                raise Fatal(f"the GCS bucket {store.bucket!r} does not exist ({store!r}); exiting") from exc
            if status in (401, 403):
                raise Fatal(f"GCS refused the credentials for bucket {store.bucket!r} ({_why(exc)}); exiting") from exc
            log.error("the GCS storage %r cannot be reached: %s; %s", store, _why(exc), NOT_READY)
            return "store"
        return ""
    # Azure and stores of the application's own: what /ready asks.
    try:
        await _timed(stores.probe(store))
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ if isinstance(exc, errors.TusError) and exc.__cause__ is not None else exc
        log.error("the storage %r cannot be reached: %s; %s", store, _why(cause), NOT_READY)
        return "store"
    return ""


def _s3_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


async def _locker(locker: Any, store: Any) -> str:
    checks_itself = isinstance(locker, lockers.ReadyLocker)  # (not a narrowing: locker is any locker below)
    if not checks_itself:
        return ""  # always ready
    if type(locker).__name__ == "FileLocker":
        if getattr(store, "root", None) == locker.root:
            return ""  # the upload directory's line says it all
        try:
            await _timed(lockers.probe(locker))
        except Exception as exc:  # noqa: BLE001
            log.warning("the lock directory %s cannot take lock files (%s); %s", locker.root, _why(exc), NOT_READY)
            return "locker"
        return ""
    try:
        await _timed(lockers.probe(locker))
    except Exception as exc:  # noqa: BLE001
        text = _why(exc)
        if type(exc).__name__ == "AuthenticationError" or text.startswith(("NOAUTH", "WRONGPASS", "invalid password")):
            raise Fatal(f"{locker!r} refused the credentials ({text}); exiting") from exc
        if type(locker).__name__ == "RedisLocker":
            from ..lockers.redis import _without_password

            what = f"the Redis locker at {_without_password(locker.url)}"
        else:
            what = repr(locker)
        log.error("%s cannot be reached: %s; %s", what, text, NOT_READY)
        return "locker"
    finally:
        close = getattr(locker, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()  # the server's event loop connects afresh
    return ""


async def _hook_server(flag: str, target: str, events: list[str]) -> str:
    blocking = sorted(BLOCKING_HOOKS.intersection(events))
    if not blocking:
        return ""
    host, port = _host_port(target)
    if host is None:
        return ""
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        why = "no answer within 2 s" if isinstance(exc, TimeoutError) else errors.one_line(exc)
        log.warning("%s %s cannot be reached (%s); the blocking hooks %s will fail until it answers (each call "
                    "retries it); starting anyway", flag, target, why, ", ".join(blocking))
        return "hooks"
    return ""


def _host_port(target: str) -> tuple[str | None, int]:
    """host and port of an http(s):// URL or a gRPC ``host:port``."""
    if "://" not in target:
        target = "grpc://" + target
    parts = urllib.parse.urlsplit(target)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)
    except ValueError:
        return None, 0
    if not parts.hostname or not port:
        return None, 0
    return parts.hostname, port


__all__ = ["Fatal", "check"]
