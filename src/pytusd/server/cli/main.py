"""The ``pytusd`` command's entry: serve (one process or ``--workers``) or run an admin command, with start-up checks
and tusd's start-up lines."""


from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ...asgi.app import TusApp
from ...core.config import Config
from ...lockers import MemoryLocker
from ...observe import logs
from ...stores import FileStore
from ...version import __version__
from .compose import config_from_args, hook_events
from .flags import ADMIN_COMMANDS, build_parser, normalise_argv


def upload_line(
    base_path: str, *, unix_socket: str = "", tls: bool = False, host: str = "", port: int = 0
) -> Callable[[Sequence[Any]], str]:
    """tusd's last start-up line, ``You can now upload files to: <protocol>://<address><base path>``, for the
    addresses the server listens on (``getsockname()`` of its sockets; ``host`` and ``port`` when it was given
    none). The address is written as Go writes a listener's (``[::1]:8080`` for IPv6) and the base path as given on
    the command line, as tusd prints them; for a UNIX socket there is no line (``""``), as in tusd."""

    def line(addresses: Sequence[Any]) -> str:
        if unix_socket:
            return ""
        where, at = (addresses[0][0], addresses[0][1]) if addresses else (host, port)
        address = f"[{where}]:{at}" if ":" in where else f"{where}:{at}"
        return f"You can now upload files to: {'https' if tls else 'http'}://{address}{base_path}"

    return line


def start_workers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--workers N``: fork N server processes on one listening socket (see :mod:`pytusd.server.workers`)."""
    from .. import workers

    count = args.workers or os.cpu_count() or 1
    object_store = args.s3_bucket or args.gcs_bucket or args.azure_storage
    if (args.locker or ("memory" if object_store else "file")) == "memory":
        parser.error(
            f"--workers {count}: the memory locker cannot coordinate processes (each worker would lock uploads "
            "only against itself); use --locker file (a directory on this host, --upload-dir) or --locker redis"
        )
    workers.start(count, args.host, args.port, args.unix_sock, args.shutdown_timeout or 10.0,
                  show_startup_logs=args.show_startup_logs, upload_line=upload_line_from_args(args))


def upload_line_from_args(args: argparse.Namespace) -> Callable[[Sequence[Any]], str] | None:
    """The 'You can now upload files to' line of these flags (see :func:`upload_line`); None with
    --show-startup-logs=false."""
    if not args.show_startup_logs:
        return None
    return upload_line(args.base_path, unix_socket=args.unix_sock, tls=bool(args.tls_certificate and args.tls_key),
                       host=args.host, port=args.port)


def cleanup(args: argparse.Namespace) -> int:
    """``pytusd cleanup``: remove expired unfinished uploads once (for cron), with the server's flags."""
    import asyncio

    from ...core.expiration import Cleaner
    from ...stores import base

    config = config_from_args(args)
    store = base.expiring(config.store)
    if store is None:
        print(f"pytusd cleanup: {config.store!r} does not support expiration", file=sys.stderr)
        return 2
    if config.expiration <= 0:
        print("pytusd cleanup: set --expiration (or PYTUSD_EXPIRATION) to say when uploads expire", file=sys.stderr)
        return 2
    cleaner = Cleaner(store, config.locker, config.expiration, 0)
    removed = asyncio.run(cleaner.run_once())
    print(f"removed {removed} expired upload(s) from {config.store!r}")
    return 0


def upload_dir_problem(args: argparse.Namespace) -> str:
    """Why --upload-dir can never work (it is a file), when the store or the locker lives there; else ``""``."""
    object_store = args.s3_bucket or args.gcs_bucket or args.azure_storage
    uses_dir = not object_store or args.locker == "file"
    path = args.upload_dir
    if uses_dir and os.path.lexists(path) and not os.path.isdir(path):
        return f"--upload-dir {path} is a file, not a directory"
    return ""


def check_backends(config: Config, args: argparse.Namespace) -> int:
    """The start-up checks (pytusd.server.startup): one log line per backend that cannot be reached; 2 when one can never
    work (the caller exits with it), else 0 (not-ready parts start not ready)."""
    import asyncio

    from .. import startup

    hook_servers: list[tuple[str, str, list[str]]] = []

    def events(own: str) -> list[str]:
        return hook_events(args, own)

    if args.hooks_http:
        hook_servers.append(("--hooks-http", args.hooks_http, events(args.hooks_http_events)))
    if args.hooks_grpc:
        hook_servers.append(("--hooks-grpc", args.hooks_grpc, events(args.hooks_grpc_events)))
    try:
        asyncio.run(startup.check(config, hook_servers))
    except startup.Fatal as exc:
        logging.getLogger("pytusd").error("%s", exc)
        return 2
    return 0


def run() -> None:
    """The ``pytusd`` command. Once the server has stopped gracefully (everything stored, hooks and logs flushed),
    it exits at once, as tusd does, instead of tearing the interpreter down object by object (about 0.1 s)."""
    code = main()
    if _served:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    raise SystemExit(code)


_served = False  # main() ran the server to its end


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "serve"
    if argv and argv[0] in ADMIN_COMMANDS:
        command = argv.pop(0)
    parser = build_parser(command)
    args = parser.parse_args(normalise_argv(argv, parser))
    logs.configure(args.log_format, args.verbose and command == "serve")
    if command != "serve" and (problem := upload_dir_problem(args)):
        parser.error(problem)
    if command == "cleanup":
        return cleanup(args)
    if command != "serve":
        from .. import admin

        try:
            config = config_from_args(args)
        except (ValueError, OSError, ImportError) as exc:
            parser.error(str(exc))
        return admin.run(command, config, args.ids, args.json)
    if bool(args.tls_certificate) != bool(args.tls_key):
        parser.error("--tls-certificate and --tls-key go together")
    if args.s3_log_api_calls and not args.verbose:
        parser.error("--s3-log-api-calls logs at the verbose level: it needs --verbose (as in tusd)")
    if args.enable_h2c and args.tls_certificate:
        parser.error("--enable-h2c is HTTP/2 without encryption: it cannot be combined with --tls-certificate")
    if problem := upload_dir_problem(args):  # before --workers forks: one line, not one per worker
        logging.getLogger("pytusd").error("%s; exiting", problem)
        return 2
    if (args.workers or os.cpu_count() or 1) > 1:
        start_workers(args, parser)  # returns in each worker process, which goes on below; the parent never returns

    from .. import ServeOptions, serve, tune_malloc

    if args.malloc_tuning:
        tune_malloc()
    try:
        if args.otel_traces:
            from ...observe import tracing

            tracing.configure(args.otel_traces)
        config = config_from_args(args)
        app = TusApp(config)
    except (ValueError, OSError, ImportError, AttributeError) as exc:
        parser.error(str(exc))
    if code := check_backends(config, args):
        return code
    options = ServeOptions(
        host=args.host,
        port=args.port,
        unix_socket=args.unix_sock,
        tls_certificate=args.tls_certificate,
        tls_key=args.tls_key,
        tls_mode=args.tls_mode,
        network_timeout=config.network_timeout,
        shutdown_timeout=args.shutdown_timeout,
        max_header_size=args.max_header_size,
        enable_h2c=args.enable_h2c,
    )
    base = config.base_path if "://" in config.base_path else options.url + config.base_path
    banner = f"pytusd {__version__} serving uploads at {base} (storage {config.store!r}, locker {config.locker!r})"
    if isinstance(config.store, FileStore):
        banner += f"; file I/O {config.store.file_io_reason}"
    elif isinstance(config.locker, MemoryLocker):
        # An object store is shared by nature: more processes than this one would write the same uploads unlocked.
        logging.getLogger("pytusd.startup").warning(
            "locker memory: uploads are locked within this process only; if more than one pytusd process serves "
            "this %s, use --locker redis (two PATCHes of one upload in two processes would corrupt it)",
            type(config.store).__name__,
        )
    from .. import workers

    if not args.show_startup_logs:
        banner = ""
    # Under --workers, the parent prints the upload line once, for its listening socket (workers.start).
    serve(app, options, banner, upload_line_from_args(args) if workers.current() is None else None)
    global _served
    _served = True
    return 0
