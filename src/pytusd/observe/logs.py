"""Log output: one line per event, as text (``key=value``) or JSON, like tusd's ``--log-format``.

A record is always one line: in text, the message and every value that is not a plain token are JSON strings
(ASCII, with escapes), and so is a traceback (``error=``); client text (paths, IDs, headers) can neither break a
line nor reach a terminal as control characters.

Every line logged while a request is handled carries its request ID (``request_id``): the request's
``X-Request-ID`` when it has a usable one, else a new one (:func:`request_id_from`). The ID lives in a context
variable (:data:`request_id_var`) that hooks run in the background inherit; :class:`RequestIdFilter` puts it on
log records. Upload events log their fields (``event``, ``upload_id``, ...) with ``extra=fields(...)``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import random
import re
import sys
import time
from typing import Any

# The ID of the request being handled (None outside of requests).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("pytusd_request_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# What a client's X-Request-ID may be to be taken over (else a new ID is made): no spaces, quotes or line breaks.
_USABLE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# pytusd's loggers; each gets a RequestIdFilter (logger filters do not apply to child loggers' records).
LOGGERS = ("pytusd", "pytusd.hooks", "pytusd.s3", "pytusd.startup")


# Request IDs tell log lines apart; they guard nothing, so they come from a generator of this process's own,
# seeded from the OS and seeded afresh in every forked worker (no system call per request, as uuid4 makes).
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """128 random bits as 32 lowercase hex characters (the form of uuid4().hex)."""
    return "%032x" % _ids.getrandbits(128)


def request_id_from(header: str | None) -> str:
    """The request's own ID if it sent a usable ``X-Request-ID``, else a new one (:func:`new_request_id`)."""
    if header is not None:
        header = header.strip()
        if _USABLE_ID.fullmatch(header):
            return header
    return new_request_id()


def current_request_id() -> str | None:
    return request_id_var.get()


def fields(**values: Any) -> dict[str, Any]:
    """``log.info(..., extra=fields(event="UploadCreated", upload_id=...))``: structured fields of a line."""
    return {"fields": values}


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to the ID of the request being handled (None outside of requests). Add it to a
    handler to have the ID on every record the handler sees, pytusd's or not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


_FILTER = RequestIdFilter()


def install_request_id_filter() -> None:
    """Give pytusd's loggers the request-ID filter (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = dict(getattr(record, "fields", None) or {})
    request_id = getattr(record, "request_id", None)
    if request_id is not None:
        extra["request_id"] = request_id
    return extra


_BARE = re.compile(r"[A-Za-z0-9._:/+=@-]+")


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z level={record.levelname} msg={json.dumps(record.getMessage())}"
        for key, value in _record_fields(record).items():
            if value is not None:
                line += f" {key}={_text_value(value)}"
        if record.exc_info:
            # Quoted like any value, so a record stays one line whatever text (a client's) the exception carries.
            line += f" error={json.dumps(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _record_fields(record).items():
            if value is not None:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(log_format: str = "text", verbose: bool = True) -> None:
    """Send pytusd's (and the server's) logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pytusd").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("pytusd.startup").setLevel(logging.INFO)
