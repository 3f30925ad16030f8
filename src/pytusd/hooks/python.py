"""Python hooks: an async callable in the same process receives tusd's HookRequest dict and returns a
HookResponse-shaped dict (or None)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

HookFunction = Callable[[str, dict[str, Any]], Awaitable[Any] | Any]


class PythonHookBackend:
    def __init__(self, function: HookFunction) -> None:
        self.function = function

    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        result = self.function(hook_type, request)
        if inspect.isawaitable(result):
            result = await result
        return result
