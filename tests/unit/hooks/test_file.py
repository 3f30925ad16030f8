"""File hooks (tusd's -hooks-dir): an executable per event, its exit status and output, arguments that never reach a
shell, the timeout, and scripts written for tusd."""

from __future__ import annotations

import json
import stat

from pytusd.hooks import FileHookBackend, Hooks

from tests.conftest import TUS, create, patch


def script(directory, name: str, body: str) -> None:
    path = directory / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def test_file_hooks(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    out = tmp_path / "post-finish.json"
    script(hooks_dir, "pre-create", "#!/bin/sh\n"
           "cat > /dev/null\n"
           'echo \'{"ChangeFileInfo": {"MetaData": {"checked": "yes"}}}\'\n')
    script(hooks_dir, "post-finish", f"#!/bin/sh\necho \"$TUS_ID $TUS_SIZE $TUS_OFFSET $PWD\" > {out}.env\n"
           f"cat > {out}\n")
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create", "post-finish", "post-create"))  # no post-create script
    client = client_factory(hooks=hooks)
    url = await create(client, 2)
    await patch(client, url, 0, b"ok")
    await hooks.drain()
    upload_id = url.rsplit("/", 1)[1]
    assert json.loads(out.read_text())["Event"]["Upload"]["MetaData"] == {"checked": "yes"}
    assert out.with_suffix(".json.env").read_text().split() == [upload_id, "2", "2", str(hooks_dir)]


async def test_file_hook_failures(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create",))
    client = client_factory(hooks=hooks)
    script(hooks_dir, "pre-create", "#!/bin/sh\necho oops >&2\nexit 3\n")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and "pre-create hook failed" in r.text
    script(hooks_dir, "pre-create", "#!/bin/sh\necho 'not json'\n")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and hooks.failures["pre-create"] == 2


async def test_file_hook_arguments_never_reach_a_shell(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    marker = tmp_path / "pwned"
    script(hooks_dir, "pre-create", "#!/bin/sh\ncat > /dev/null\n")
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create",))
    evil = "$(touch " + str(marker) + ")"
    import base64

    meta = "name " + base64.b64encode(evil.encode()).decode()
    r = await client_factory(hooks=hooks).post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": meta}
    )
    assert r.status_code == 201 and not marker.exists()


async def test_file_hook_timeout_kills_the_script(client_factory, tmp_path):
    import time

    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    script(hooks_dir, "pre-create", "#!/bin/sh\nsleep 30\n")
    hooks = Hooks(FileHookBackend(hooks_dir, timeout=0.3), ("pre-create",))
    started = time.monotonic()
    r = await client_factory(hooks=hooks).post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 500 and time.monotonic() - started < 5


async def test_tusd_style_script_with_lower_case_fields_and_counters(client_factory, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    script(hooks_dir, "pre-create", "#!/bin/sh\ncat > /dev/null\n"
           'echo \'{"rejectupload": true, "httpresponse": {"statuscode": 418, "body": "teapot"}}\'\n')
    script(hooks_dir, "pre-terminate", "#!/bin/sh\nexit 1\n")
    hooks = Hooks(FileHookBackend(hooks_dir), ("pre-create", "pre-terminate"))
    client = client_factory(hooks=hooks)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status_code == 418 and r.text == "teapot"
    counters = hooks.metrics()
    assert counters["tusd_hook_invocations_total"]["pre-create"] == 1
    assert counters["tusd_hook_errors_total"]["pre-create"] == 0


def test_a_script_that_does_not_read_its_stdin_is_judged_by_its_exit_status(tmp_path):
    """tusd's example scripts exit without reading the hook JSON. Should a script be gone before its stdin is
    written, asyncio ignores the closed pipe but uvloop (pytusd's server) raises RuntimeError; the JSON is fed so
    that, on either loop, the exit status decides, as with tusd. Here the script has surely exited first."""
    import asyncio

    import uvloop

    from pytusd.hooks.file import _feed

    async def run(status: int) -> int:
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", f"exit {status}", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        await process.wait()
        await asyncio.sleep(0.05)  # the loop has seen the pipe close
        await _feed(process, b"{}" * 100_000)
        return await process.wait()

    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(run(0)) == 0, factory
            assert runner.run(run(4)) == 4, factory
