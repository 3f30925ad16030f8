"""Admin commands: ``pytusd list``, ``pytusd info ID``, ``pytusd delete ID``, ``pytusd cleanup``, ``pytusd hooks``.

They take the server's flags, so they reach the same store and locker as the server they sit next to (any
store: disk, S3, GCS, Azure). ``delete`` takes the upload's lock first, asking a running server to let go of it,
exactly as a ``DELETE`` request would.

Filenames, metadata and even IDs come from clients (or from files in a folder), so every value printed as text goes
through :func:`printable` and reaches the admin's terminal as one visible line; ``--json`` output is escaped by
``json.dumps`` (ASCII only).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import unicodedata
from collections.abc import Callable
from typing import Any, TextIO

from .. import errors
from ..core import expiration
from ..core.config import Config
from ..hooks import Hooks
from ..hooks import outbox as outbox_module
from ..info import UploadInfo
from ..stores import Listable, Upload, base


def state_of(info: UploadInfo) -> str:
    if info.is_complete:
        return "finished"
    if info.is_final:
        return "final, waiting for partials"
    if info.size_is_deferred:
        return "receiving (length not yet known)"
    return "receiving"


async def describe(config: Config, upload: Upload) -> dict[str, Any]:
    info = await upload.info()
    expires = None
    if config.expiration > 0:
        expires = await expiration.expires_at(config.store, upload, info, config.expiration)
    return {
        "id": info.id,
        "size": None if info.size_is_deferred else info.size,
        "offset": info.offset,
        "state": state_of(info),
        "filename": info.metadata.get("filename", ""),
        "partial": info.is_partial,
        "final": info.is_final,
        "expires": None if expires is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
        "metadata": dict(info.metadata),
        "storage": dict(info.storage),
    }


async def list_uploads(config: Config) -> list[dict[str, Any]]:
    store = config.store
    if not isinstance(store, Listable):
        raise errors.ERR_NOT_IMPLEMENTED(f"{store!r} cannot list its uploads")
    rows = []
    async for upload_id in store.upload_ids():
        try:
            rows.append(await describe(config, await store.get(upload_id)))
        except errors.TusError:  # removed or expired while we listed
            continue
    rows.sort(key=lambda row: row["id"])
    return rows


async def info(config: Config, upload_id: str) -> dict[str, Any]:
    return await describe(config, await config.store.get(upload_id))


async def delete(config: Config, upload_id: str) -> dict[str, Any]:
    """Delete an upload as a ``DELETE`` request would: under its lock (a running server lets go of it), then the
    post-terminate hook, so the application hears of it. pre-terminate is not asked: the operator decides."""
    store = config.store
    if not base.capabilities(store).terminate:
        raise errors.ERR_NOT_IMPLEMENTED(f"{store!r} cannot delete uploads")
    lock = await config.locker.acquire(upload_id, lambda: None, config.acquire_lock_timeout)
    try:
        upload = await store.get(upload_id)
        info = await upload.info()
        described = await describe(config, upload)
        await base.terminatable(upload).terminate()
    finally:
        await lock.release()
    hooks = config.hooks
    if isinstance(hooks, Hooks) and hooks.wants("post-terminate"):
        path = config.route_prefix + upload_id
        # Recorded in the outbox with --hooks-durable (a running server delivers it), else fired and waited for.
        await hooks.notify("post-terminate", info, {"Method": "DELETE", "URI": path, "RemoteAddr": "", "Header": {}})
        await hooks.drain()
    return described


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control (Cc: C0, DEL, C1) and format characters (Cf: bidi overrides and isolates, zero-width ones), line and
# paragraph separators, and lone surrogates (which a UTF-8 terminal could not even be sent).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(value: object) -> str:
    """``value`` as text that shows what it is on a terminal and stays on one line: control characters, format
    characters that can disguise text (bidi overrides, zero-width characters), line and paragraph separators become
    visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), and a backslash is doubled so an escape cannot be faked."""
    text = str(value)
    if text.isprintable() and "\\" not in text:  # the common case: nothing to do (isprintable() is stricter)
        return text
    out = []
    for char in text:
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif unicodedata.category(char) in _HIDDEN_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    size: float = value
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    headers = ("ID", "SIZE", "OFFSET", "STATE", "FILENAME", "EXPIRES")
    table = [headers] + [
        tuple(printable(cell) for cell in
              (r["id"], _size(r["size"]), _size(r["offset"]), r["state"], r["filename"], r["expires"] or ""))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def run_hooks(config: Config, arguments: list[str], as_json: bool, out: TextIO = sys.stdout) -> int:
    """``pytusd hooks pending | retry [ID] | drop ID``: the durable hooks' outbox. Exit status 0, 1 (no such event,
    or it is being delivered now) or 2 (usage: no --hooks-durable, a wrong action or ID)."""
    hooks = config.hooks
    outbox = hooks.outbox if isinstance(hooks, Hooks) else None
    action, rest = (arguments[0], arguments[1:]) if arguments else ("", [])
    wanted = {"pending": (0,), "retry": (0, 1), "drop": (1,)}
    if action not in wanted or len(rest) not in wanted[action]:
        print("pytusd hooks: give 'pending', 'retry [EVENT-ID]' or 'drop EVENT-ID'", file=sys.stderr)
        return 2
    if outbox is None:
        print("pytusd hooks: the outbox is used with --hooks-durable and a hook backend; give the server's flags",
              file=sys.stderr)
        return 2

    async def act() -> Any:
        try:
            if action == "pending":
                now = time.time()
                return [event.summary(now) for event in await outbox.listing()]
            if action == "retry":
                return await outbox.retry(rest[0] if rest else None)
            return await outbox.drop(rest[0])
        finally:
            await outbox.store.aclose()

    if rest and not outbox_module.EVENT_ID.fullmatch(rest[0]):
        print(printable(f"pytusd hooks: {rest[0][:40]!r} is not an event ID (32 hex digits)"), file=sys.stderr)
        return 2
    try:
        result = asyncio.run(act())
    except Exception as exc:  # the outbox cannot be reached, or the event is being delivered
        print(f"pytusd hooks {action}: {printable(exc)}", file=sys.stderr)
        return 1
    if action == "pending":
        if as_json:
            json.dump(result, out, indent=2)
            out.write("\n")
        else:
            for row in result:
                out.write(printable(f"{row['id']}  {row['state']}  {row['hook']}  {row['upload_id']}  "
                                    f"age {row['age']:.0f}s  attempts {row['attempts']}  {row['last_error']}") + "\n")
            out.write(f"{len(result)} event(s)\n")
        return 0
    if action == "retry":
        out.write(f"{result} event(s) due now\n")
        return 0 if result or not rest else 1
    if not result:
        print(printable(f"pytusd hooks drop: no event {rest[0]} in {outbox.store!r}"), file=sys.stderr)
        return 1
    out.write(f"dropped {rest[0]}\n")
    return 0


def run(command: str, config: Config, arguments: list[str], as_json: bool, out: TextIO = sys.stdout) -> int:
    """Run one admin command; the exit status is 0, 1 (the upload is not there, or the store cannot) or 2."""
    if command == "hooks":
        return run_hooks(config, arguments, as_json, out)
    actions: dict[str, Callable[[], Any]] = {
        "list": lambda: list_uploads(config),
        "info": lambda: info(config, arguments[0]),
        "delete": lambda: delete(config, arguments[0]),
    }
    if command in ("info", "delete") and len(arguments) != 1:
        print(f"pytusd {command}: give exactly one upload ID", file=sys.stderr)
        return 2
    for stream in (out, sys.stderr):  # a terminal that cannot show a filename's characters gets escapes, no crash
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        result = asyncio.run(actions[command]())
    except errors.TusError as exc:
        if exc.is_(errors.ERR_UPLOAD_NOT_FOUND, errors.ERR_UPLOAD_EXPIRED) and arguments:
            gone = "expired and was removed" if exc.is_(errors.ERR_UPLOAD_EXPIRED) else "does not exist"
            print(printable(f"pytusd {command}: upload {arguments[0]} {gone} in {config.store!r}"), file=sys.stderr)
        else:
            print(f"pytusd {command}: {exc.code}: {printable(exc.message)}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(result, out, indent=2)  # ensure_ascii: every control or non-ASCII character is a \u escape
        out.write("\n")
    elif command == "list":
        print_table(result, out)
    elif command == "delete":
        out.write(f"deleted {printable(result['id'])} ({_size(result['offset'])} of {_size(result['size'])})\n")
    else:
        for key, value in result.items():
            out.write(f"{key}: {json.dumps(value) if isinstance(value, dict) else printable(value)}\n")
    return 0
