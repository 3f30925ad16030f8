"""File hooks: an executable per event in a directory, as tusd's ``-hooks-dir``.

``<dir>/<event>`` (e.g. ``pre-create``) runs with the HookRequest JSON on stdin, the upload's ``TUS_ID``,
``TUS_SIZE`` and ``TUS_OFFSET`` (and a durable event's ``TUS_EVENT_ID``) in its environment and the hooks
directory as working directory. It is executed
directly, never through a shell. Exit status 0 with JSON (or nothing) on stdout is its answer; any other status, or
output that is not JSON, is a hook failure, and so is running longer than ``timeout`` (the script is killed). A
missing script means the hook does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

from .base import decode_answer


class FileHookBackend:
    def __init__(self, directory: str | os.PathLike[str], timeout: float = 0) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.timeout = timeout  # seconds; 0 waits as long as the script runs (tusd's behaviour)

    def __repr__(self) -> str:
        return f"FileHookBackend({self.directory!r})"

    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        path = os.path.join(self.directory, hook_type)
        if not os.path.isfile(path):
            return None
        upload = request["Event"]["Upload"]
        env = {
            **os.environ,
            "TUS_ID": str(upload.get("ID", "")),
            "TUS_SIZE": str(upload.get("Size", 0)),
            "TUS_OFFSET": str(upload.get("Offset", 0)),
        }
        if request.get("EventID"):
            env["TUS_EVENT_ID"] = str(request["EventID"])  # --hooks-durable: the same on every delivery
        process = await asyncio.create_subprocess_exec(
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # passed through to the server's stderr, as tusd does
            cwd=self.directory,
            env=env,
            start_new_session=True,  # its own process group, so a timeout ends the script's children too
        )
        try:
            async with asyncio.timeout(self.timeout or None):
                assert process.stdout is not None  # stdout=PIPE
                stdout, _ = await asyncio.gather(process.stdout.read(), _feed(process, json.dumps(request).encode()))
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise RuntimeError(f"{path} did not finish within {self.timeout:g} s and was killed") from None
        if process.returncode != 0:
            raise RuntimeError(f"{path} exited with status {process.returncode}")
        return decode_answer(stdout, path)


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """The hook JSON on the script's stdin. A script that exits without reading it is fine, as with tusd (Go's
    exec ignores the broken pipe): its exit status decides. (uvloop reports the closed pipe as a RuntimeError,
    asyncio as BrokenPipeError or ConnectionResetError.)"""
    stdin = process.stdin
    if stdin is None:
        return
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            stdin.close()
