"""A tusd user switches without rewriting anything: tusd's own documented command lines and example hooks, run
unchanged against pytusd and against tusd, must give the same results.

Nothing of tusd is copied here: its docs and ``examples/`` are read at test time from the Go module that
``scripts/install-tusd`` downloads (``testbed.services.tusd_source``). Covered:

- every ``$ tusd ...`` command line of tusd's docs: pytusd accepts its flags; those that need no cloud account
  start both servers, which then answer ``OPTIONS`` alike;
- ``examples/hooks/file``: the hook scripts as ``-hooks-dir`` (copied only to make them executable), including
  ``pre-create`` with its ``exit 0`` line removed, as its comment invites;
- the ``server.py`` of tusd's ``examples/hooks/http`` and ``examples/hooks/grpc``, started as they are (port 8000):
  a creation without a filename is refused with their 400 and header, one with a filename gets their ID prefix and
  their metadata;
- ``-hooks-plugin``: Go plugins cannot be loaded by Python; pytusd says so and exits 2 (README, Hooks).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.services import tusd_binary, tusd_source

from .conftest import PytusdProcess, free_port

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
SERVERS = ("tusd", "pytusd")
EXAMPLE_PORT = 8000  # where tusd's example hook servers listen


def command_of(name: str) -> tuple[str, ...]:
    return (str(tusd_binary()),) if name == "tusd" else (sys.executable, "-m", "pytusd")


def documented_command_lines() -> list[list[str]]:
    """Every ``$ tusd ...`` line of tusd's docs (continued lines joined), as argument lists without ``tusd``."""
    lines = []
    for page in sorted((tusd_source() / "docs").rglob("*.md")):
        text = page.read_text(errors="replace").splitlines()
        for number, line in enumerate(text):
            if not re.match(r"^\$ tusd( |$)", line):
                continue
            words, rest = [line[2:]], iter(text[number + 1:])
            while words[-1].endswith("\\"):  # a continued line; comment lines between the flags are skipped
                words[-1] = words[-1][:-1]
                following = next(rest, "").strip()
                words.append(following + " \\" if following.startswith("#") else following)
            lines.append(shlex.split(" ".join(w for w in words if not w.startswith("#")))[1:])
    assert len(lines) >= 20, "tusd's docs should hold its command lines"
    return lines


# Flags that need a service or an account (started elsewhere in the suite), or a file the docs only name.
NEEDS_OUTSIDE = ("-azure-", "-gcs-", "-s3-", "-hooks-", "-tls-", "-unix-sock")


def test_every_documented_command_line_is_accepted() -> None:
    """pytusd parses each of tusd's documented command lines exactly as written (``-hooks-plugin`` aside)."""
    from pytusd.server.cli import flags

    parser = flags.build_parser()
    for argv in documented_command_lines():
        if "-hooks-plugin" in argv:
            continue  # test_hooks_plugin_is_refused_clearly
        parser.parse_args(flags.normalise_argv(argv))  # SystemExit(2) with the message on a flag it does not know


@pytest.fixture
def started(tmp_path: Path) -> Iterator[dict[str, list[PytusdProcess]]]:
    servers: dict[str, list[PytusdProcess]] = {name: [] for name in SERVERS}
    yield servers
    for processes in servers.values():
        for process in processes:
            process.stop()


def start(started: dict[str, list[PytusdProcess]], name: str, folder: Path, *flags: str,
          port: int | None = None) -> PytusdProcess:
    folder.mkdir(parents=True, exist_ok=True)
    process = PytusdProcess(folder / "data", *flags, command=command_of(name), port=port)
    started[name].append(process.start())
    return process


def test_documented_command_lines_serve_alike(tmp_path: Path, started: dict[str, list[PytusdProcess]]) -> None:
    """The lines that need nothing outside: both servers start with them and answer OPTIONS the same way."""
    checked = 0
    for index, argv in enumerate(documented_command_lines()):
        if any(arg.startswith(NEEDS_OUTSIDE) for arg in argv):
            continue
        argv = [arg for arg in argv if not arg.startswith("-upload-dir")]  # each server writes to its own folder
        answers = {}
        for name in SERVERS:
            # -host/-port as the line gives them, else 127.0.0.1 and a free port (PytusdProcess passes them first,
            # so the line's own come later and win, as with Go's flag package).
            port = next((int(arg.split("=", 1)[1]) for arg in argv if arg.startswith("-port=")), None)
            if "-port" in argv:
                port = int(argv[argv.index("-port") + 1])
            if port is not None and not _free(port):
                pytest.fail(f"port {port} of {argv} is taken")
            process = start(started, name, tmp_path / f"{index}-{name}", *argv, port=port)
            response = httpx.options(f"http://127.0.0.1:{process.port}{_base_path(argv)}",
                                     headers={**TUS, "Origin": "https://app.example"})
            # (Tus-Resumable on a refused origin differs on purpose: README's table of differences)
            answers[name] = (response.status_code, response.headers.get("tus-version"),
                             response.headers.get("tus-max-size"), "access-control-allow-origin" in response.headers)
            process.stop()
        assert answers["pytusd"] == answers["tusd"], (argv, answers)
        checked += 1
    assert checked >= 8


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind (a closed one's TIME_WAIT)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _base_path(argv: list[str]) -> str:
    base = argv[argv.index("-base-path") + 1].strip("/") if "-base-path" in argv else "files"
    return f"/{base}/" if base else "/"


# -- tusd's example hooks -------------------------------------------------------------------------------------------


def example_hooks(tmp_path: Path, activate_pre_create: bool) -> Path:
    """tusd's examples/hooks/file, executable (the module cache keeps them read-only, without exec bits)."""
    folder = tmp_path / "hooks"
    shutil.copytree(tusd_source() / "examples" / "hooks" / "file", folder)
    for script in folder.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    if activate_pre_create:  # what the script's own comment says to do
        script = folder / "pre-create"
        script.write_text(re.sub(r"^exit 0\n", "", script.read_text(), count=1, flags=re.M))
    return folder


def upload(port: int, metadata: str | None, body: bytes = b"hello world") -> tuple[httpx.Response, httpx.Response]:
    headers = {**TUS, "Upload-Length": str(len(body))}
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    created = httpx.post(f"http://127.0.0.1:{port}/files/", headers=headers)
    if created.status_code != 201:
        return created, created
    url = created.headers["location"]
    patched = httpx.patch(url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                          content=body)
    return created, patched


def filename(name: str) -> str:
    return f"filename {base64.b64encode(name.encode()).decode()}"


@pytest.mark.parametrize("activate_pre_create", [False, True], ids=["as-shipped", "pre-create-activated"])
def test_example_hook_scripts(tmp_path: Path, started: dict[str, list[PytusdProcess]],
                              activate_pre_create: bool) -> None:
    """-hooks-dir with tusd's example scripts: the same answers from both, and the scripts' stderr in the log."""
    if shutil.which("jq") is None:
        pytest.fail("jq is missing (the example scripts read the hook JSON with it; scripts/test installs it)")
    hooks = example_hooks(tmp_path, activate_pre_create)
    results = {}
    for name in SERVERS:
        process = start(started, name, tmp_path / name, "-hooks-dir", str(hooks))
        with_name = upload(process.port, filename("a.txt"))
        without = upload(process.port, None)
        results[name] = [(r.status_code, r.text.strip() if r.status_code >= 400 else "")
                         for r in (*with_name, *without)]
        upload_id = with_name[0].headers["location"].rsplit("/", 1)[1]
        deadline = time.monotonic() + 10
        while f"Upload {upload_id} (11 bytes) finished" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"Upload {upload_id} (11 bytes) finished" in process.log(), (name, process.log()[-2000:])
    assert results["pytusd"] == results["tusd"], results
    assert results["tusd"][:2] == [(201, ""), (204, "")]


@pytest.fixture
def example_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """tusd's example hook server (http or grpc), started as it is: ``python server.py`` in its folder."""
    kind = request.param
    if not _free(EXAMPLE_PORT):
        pytest.fail(f"port {EXAMPLE_PORT}, where tusd's example hook servers listen, is taken")
    folder = tusd_source() / "examples" / "hooks" / kind
    proc = subprocess.Popen([sys.executable, "server.py"], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    deadline = time.monotonic() + 15
    while _free(EXAMPLE_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"tusd's {kind} example server did not start: {proc.communicate()[1].decode()}")
        time.sleep(0.05)
    try:
        yield kind
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("example_server", ["http", "grpc"], indirect=True)
def test_example_hook_servers(tmp_path: Path, started: dict[str, list[PytusdProcess]], example_server: str) -> None:
    """tusd's example HTTP and gRPC hook servers: refusal without a filename, then their ID prefix and metadata."""
    flag = ["-hooks-http", f"http://localhost:{EXAMPLE_PORT}/"] if example_server == "http" else [
        "-hooks-grpc", f"localhost:{EXAMPLE_PORT}"]
    seen = {}
    for name in SERVERS:
        process = start(started, name, tmp_path / name, *flag)
        refused, _ = upload(process.port, None)
        created, patched = upload(process.port, filename("a.txt"))
        head = httpx.head(created.headers["location"], headers=TUS)
        metadata = dict(pair.split(" ", 1)[0:1] + [""] for pair in head.headers.get("upload-metadata", "").split(","))
        # A 5xx is compared by its code: tusd puts the hook's own error text after it, pytusd does not pass it on.
        said = refused.text.strip().split(":")[0] if refused.status_code >= 500 else refused.text.strip()
        seen[name] = {
            "refused": (refused.status_code, said, refused.headers.get("x-some-header")),
            "created": (created.status_code, patched.status_code,
                        created.headers["location"].rsplit("/", 1)[1].startswith("prefix-")),
            "metadata keys": sorted(metadata),
        }
    assert seen["pytusd"] == seen["tusd"], seen
    # The examples' refusal sets "Headers", a field neither server reads (the hook response's is "Header"); in the
    # gRPC example the same line raises (the message has no "headers"), so the hook fails and both answer 500.
    refusal = (400, "no filename provided") if example_server == "http" else (500, "ERR_INTERNAL_SERVER_ERROR")
    assert seen["tusd"]["refused"][:2] == refusal
    assert seen["tusd"]["created"] == (201, 204, True)
    assert seen["tusd"]["metadata keys"] == ["creation_time", "filename"]


def test_hooks_plugin_is_refused_clearly(tmp_path: Path) -> None:
    """tusd's Go plugins (``-hooks-plugin``) cannot run in Python: a clear message and exit status 2."""
    command = [sys.executable, "-m", "pytusd", "-hooks-plugin", "./hook_handler", "-port", str(free_port())]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "Go plugins cannot be loaded by Python" in done.stderr
