"""pytusd's own HTTP server, which the ``pytusd`` command serves TusApp with (TusApp itself is a plain ASGI app that
any ASGI server can serve).

- :mod:`.framing`: what a request head and a chunked body may cost besides their data, bounded before parsing;
- :mod:`.h1`: HTTP/1.1 connections on httptools (llhttp), bodies handed to the app without copies;
- :mod:`.splice`: request bodies moved from the socket into a file by ``splice(2)``;
- :mod:`.h2`: HTTP/2 over TLS (ALPN) and cleartext (h2c, prior knowledge) on the ``h2`` library;
- :mod:`.asgi`: the ASGI scope and what the protocols share;
- :mod:`.lifecycle`: listening, TLS, the lifespan, signals and graceful shutdown;
- :mod:`.workers`: ``--workers N``, pre-forked processes behind one socket;
- :mod:`.process`: open-files limit and allocator tuning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from .framing import (
    MAX_CHUNK_LINE_SIZE,
    MAX_TRAILER_FIELDS,
    MAX_TRAILER_SIZE,
    ChunkedFraming,
    FramingLimits,
    FramingTooLarge,
)
from .process import raise_open_files_limit, tune_malloc
from .lifecycle import Server, ServeOptions, apply_tls_mode, tusd_line

__all__ = [
    "MAX_CHUNK_LINE_SIZE", "MAX_TRAILER_FIELDS", "MAX_TRAILER_SIZE", "ChunkedFraming", "FramingLimits",
    "FramingTooLarge",
    "ServeOptions", "Server", "apply_tls_mode", "raise_open_files_limit", "serve", "tune_malloc",
]

log = logging.getLogger("pytusd.startup")


def serve(app: Any, options: ServeOptions, banner: str,
          upload_line: Callable[[list[Any]], str] | None = None) -> None:
    """Run ``app`` until SIGINT or SIGTERM; log ``banner`` (unless empty) once the socket listens, then print the
    line ``upload_line`` makes of the listening addresses (``getsockname()`` of each socket), unless empty, on
    stdout as tusd prints it. Returns after the graceful stop."""
    from . import workers

    raise_open_files_limit()
    worker = workers.current()
    if worker is not None and banner:
        banner += f" [worker {worker.index + 1}/{worker.count}, pid {os.getpid()}]"
    metrics = getattr(app, "metrics", None)  # the server counts connections in it (tusd_connections_open)

    def listening(addresses: list[Any]) -> None:
        if banner:
            text = banner
            if options.port == 0 and addresses and isinstance(addresses[0], tuple):
                text = text.replace(options.url, options.url_at(addresses[0][1]), 1)  # the port chosen
            log.info("%s", text)
        if upload_line is not None and (line := upload_line(addresses)):
            tusd_line(line)

    server = Server(app, options, listening, worker=worker, metrics=metrics)
    try:
        server.run()
    finally:
        if metrics is not None:
            metrics.process_exited()
