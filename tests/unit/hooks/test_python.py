"""Python hooks, in-process: callables, objects with a method per event, "module:attribute" specs, and a plain
callable on the Config."""

from __future__ import annotations

import pytest

from pytusd.hooks import Hooks, PythonHookBackend

from tests.conftest import TUS, create, patch


class EventMethods:
    def __init__(self):
        self.seen = []

    async def pre_create(self, request):
        self.seen.append("pre-create")
        return {"ChangeFileInfo": {"ID": "from-methods"}}

    def post_finish(self, request):
        self.seen.append("post-finish")


async def test_python_hook_objects_and_specs(client_factory):
    target = EventMethods()
    hooks = Hooks(PythonHookBackend(target), ("pre-create", "post-create", "post-finish"))
    client = client_factory(hooks=hooks)
    url = await create(client, 0)
    await hooks.drain()
    assert url.endswith("/files/from-methods") and target.seen == ["pre-create", "post-finish"]
    backend = PythonHookBackend.from_spec("tests.unit.hooks.test_python:EventMethods")
    assert backend.hook is EventMethods
    with pytest.raises(ValueError):
        PythonHookBackend.from_spec("no-colon")


async def test_plain_callable_on_the_config(client_factory):
    seen = []

    async def on_event(hook_type, request):
        seen.append(hook_type)
        if hook_type == "pre-create" and request["Event"]["Upload"]["Size"] > 10:
            return {"RejectUpload": True}

    client = client_factory(hooks=on_event)
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "11"})).status_code == 400
    url = await create(client, 1)
    await patch(client, url, 0, b"x")
    await client.app.handlers.hooks.drain()
    assert {"pre-create", "post-create", "pre-finish", "post-finish", "post-receive"} <= set(seen)
    assert "pre-access" not in seen
