"""Python hooks, in-process (the counterpart of tusd's Go plugins).

The hook is a callable ``fn(hook_type, request)``, an object with ``invoke_hook(request)``, or an object with a
method per event (``pre_create(request)``, ``post_finish(request)``, ...); each may be async and returns a
HookResponse-shaped dict or None. ``--hooks-python module:object`` loads one by name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

HookFunction = Callable[[str, dict[str, Any]], Awaitable[Any] | Any]


class PythonHookBackend:
    def __init__(self, hook: HookFunction | object) -> None:
        self.hook = hook

    def __repr__(self) -> str:
        return f"PythonHookBackend({self.hook!r})"

    @classmethod
    def from_spec(cls, spec: str) -> PythonHookBackend:
        """``package.module:attribute`` -> a backend around that object."""
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"expected module:object, got {spec!r}")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        return cls(target)

    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        hook = self.hook
        if hasattr(hook, "invoke_hook"):
            result = hook.invoke_hook(request)
        elif callable(hook) and not hasattr(hook, hook_type.replace("-", "_")):
            result = hook(hook_type, request)
        else:
            method = getattr(hook, hook_type.replace("-", "_"), None)
            if method is None:
                return None
            result = method(request)
        if inspect.isawaitable(result):
            result = await result
        return result
