"""Hooks: tusd's hook events and JSON, dispatched to a backend (file scripts, Python callables, ...).

Blocking hooks (pre-create, pre-finish, pre-terminate) run inside the request and can reject it or change the
response; the others are fired in the background and never delay or fail a request. Requests and responses are
tusd's HookRequest/HookResponse JSON, so hooks written for tusd work unchanged.
"""

from ..hooktypes import HOOK_TYPES
from .base import (
    BLOCKING_HOOKS,
    DEFAULT_ENABLED_HOOKS,
    HookBackend,
    HookResponse,
    Hooks,
    hook_request,
)
from .file import FileHookBackend
from .fireboom import FireboomHookBackend
from .http import HttpHookBackend
from .python import PythonHookBackend

__all__ = [
    "BLOCKING_HOOKS",
    "DEFAULT_ENABLED_HOOKS",
    "HOOK_TYPES",
    "FileHookBackend",
    "FireboomHookBackend",
    "HookBackend",
    "HookResponse",
    "HttpHookBackend",
    "Hooks",
    "PythonHookBackend",
    "hook_request",
]
