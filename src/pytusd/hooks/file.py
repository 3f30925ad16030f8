"""File hooks: an executable per event in a directory, as tusd's ``-hooks-dir``.

``<dir>/<event>`` (e.g. ``pre-create``) runs with the HookRequest JSON on stdin, the upload's ``TUS_ID``,
``TUS_SIZE`` and ``TUS_OFFSET`` in its environment and the hooks directory as working directory. It is executed
directly, never through a shell. Exit status 0 with JSON (or nothing) on stdout is its answer; any other status, or
output that is not JSON, is a hook failure. A missing script means the hook does nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any


class FileHookBackend:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(os.fspath(directory))

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
        process = await asyncio.create_subprocess_exec(
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.directory,
            env=env,
        )
        stdout, stderr = await process.communicate(json.dumps(request).encode())
        if process.returncode != 0:
            detail = stderr.decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"{path} exited with status {process.returncode}: {detail}")
        text = stdout.decode(errors="replace").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise RuntimeError(f"{path} printed something that is not JSON: {text[:200]!r}") from exc
